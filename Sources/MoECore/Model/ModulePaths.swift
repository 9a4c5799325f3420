import MoEFormats
import MoEText
/// Module paths (PEFT's naming: the checkpoint tensor name without ".weight") of the
/// linear layers LoRA can adapt, and the frozen weight behind each. The names come from
/// the model's family (Model/Families/).
extension Transformer {
    public var family: ModelFamily { config.family }

    /// The adaptable modules of one kind in layer l (not for .head).
    public func modules(of kind: ModuleKind, layer l: Int) -> [String] {
        let f = family
        switch kind {
        case .query: return [f.module(.q, layer: l)]
        case .key: return [f.module(.k, layer: l)]
        case .value: return [f.module(.v, layer: l)]
        case .projection: return [f.module(.o, layer: l)]
        case .mlp:
            if layers[l].mlp != nil { return FeedForwardPart.allCases.map { f.module(.mlp($0), layer: l) } }
            return (0..<layers[l].experts.count).flatMap { e in
                [FeedForwardPart.gate, .up, .down].map { f.module(.expert(e, $0), layer: l) }
            }
        case .router: return layers[l].router == nil ? [] : [f.module(.router, layer: l)]
        case .sharedExpert:
            return layers[l].sharedExpert == nil ? [] : FeedForwardPart.allCases.map { f.module(.shared($0), layer: l) }
        case .head: return [f.module(.head, layer: 0)]
        }
    }

    /// The frozen weight [out, in] of a module path, or nil if the model has none.
    public func linear(module: String) -> Matrix? {
        guard let (l, slot) = family.parse(module: module) else { return nil }
        if slot == .head { return lmHead }
        guard l < layers.count else { return nil }
        let w = layers[l]
        switch slot {
        case .q: return w.q
        case .k: return w.k
        case .v: return w.v
        case .o: return w.o
        case .mlp(let part): return w.mlp.map { $0[part] }
        case .router: return w.router
        case .expert(let e, let part): return e < w.experts.count ? w.experts[e][part] : nil
        case .shared(let part): return w.sharedExpert.map { $0[part] }
        case .sharedGate: return w.sharedExpertGate
        case .head: return lmHead
        }
    }

    /// The module kind of a module path.
    public func kind(of module: String) -> ModuleKind? { family.kind(of: module) }
}

extension FeedForwardWeights {
    package subscript(part: FeedForwardPart) -> Matrix {
        switch part {
        case .gate: return gate
        case .up: return up
        case .down: return down
        }
    }
}
