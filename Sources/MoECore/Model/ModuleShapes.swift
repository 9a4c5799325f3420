import MoEFormats
import MoEText
/// What laying out adapters needs to know of a model, without its weights: the config, the
/// [out, in] shape of every adaptable linear module, and where a router trained in full
/// starts from. From a loaded Transformer (training, eval) or from the config alone (merge,
/// which then reads each base tensor once, as it writes it: Merge/Merger.swift).
public struct ModuleShapes: @unchecked Sendable {
    public let config: ModelConfig
    public var family: ModelFamily { config.family }
    /// The [rows = out, cols = in] of a module path's weight, or nil if the model has none.
    public let linear: (String) -> (rows: Int, cols: Int)?
    /// Layer l's base router weight [E, H] and bias [E], which a router trained in full starts
    /// from; nil pointers when the weights are not loaded (the trained values replace them).
    package let routerBase: (Int) -> (weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?)

    public init(model: Transformer) {
        config = model.config
        linear = { model.linear(module: $0).map { ($0.rows, $0.cols) } }
        routerBase = { l in (model.layers[l].router.map { UnsafePointer($0.pointer) }, model.layers[l].routerBias) }
    }

    /// The shapes a Transformer built from `config` has (Model/Transformer.swift builds each
    /// weight with these sizes and refuses a checkpoint tensor of another shape; the merge
    /// checks each tensor it adds a delta to against them).
    public init(config c: ModelConfig) {
        config = c
        let h = c.hiddenSize, f = c.family
        linear = { module in
            guard let (l, slot) = f.parse(module: module) else { return nil }
            if slot == .head { return (c.vocabSize, h) }
            guard l < c.numLayers else { return nil }
            let moe = c.isMoELayer(l), s = c.sharedExpertIntermediateSize
            switch slot {
            case .q: return (c.qDim, c.mla?.qLoraRank ?? h)
            // MLA: k and v slots are kv_a_proj_with_mqa and kv_b_proj.
            case .k: return c.mla.map { ($0.kvLoraRank + $0.ropeDim, h) } ?? (c.kvDim, h)
            case .v: return c.mla.map { (c.numHeads * ($0.nopeDim + $0.valueDim), $0.kvLoraRank) } ?? (c.kvDim, h)
            case .o: return (h, c.attentionOutDim)
            case .mlp(let part):
                guard !moe else { return nil }
                return part == .down ? (h, c.intermediateSize) : (c.intermediateSize, h)
            case .router: return moe ? (c.numExperts, h) : nil
            case .expert(let e, let part):
                guard moe, e < c.numExperts else { return nil }
                return part == .down ? (h, c.expertIntermediateSize) : (c.expertIntermediateSize, h)
            case .shared(let part):
                guard moe, s > 0 else { return nil }
                return part == .down ? (h, s) : (s, h)
            case .sharedGate: return moe && s > 0 && f.moe?.sharedExpertGate != nil ? (1, h) : nil
            case .head: return (c.vocabSize, h)
            }
        }
        routerBase = { _ in (nil, nil) }
    }
}
