/// Module paths (PEFT's naming: the checkpoint tensor name without ".weight") of the
/// linear layers LoRA can adapt, and the frozen weight behind each.
extension Transformer {
    /// The adaptable modules of one kind in layer l (not for .head).
    public func modules(of kind: ModuleKind, layer l: Int) -> [String] {
        let p = WeightNames.layerPrefix(l)
        switch kind {
        case .query: return [p + "self_attn.q_proj"]
        case .key: return [p + "self_attn.k_proj"]
        case .value: return [p + "self_attn.v_proj"]
        case .projection: return [p + "self_attn.o_proj"]
        case .mlp:
            if layers[l].mlp != nil { return ["gate_proj", "up_proj", "down_proj"].map { p + "mlp." + $0 } }
            return (0..<layers[l].experts.count).flatMap { e in
                ["w1", "w3", "w2"].map { p + "block_sparse_moe.experts.\(e).\($0)" }
            }
        case .router: return layers[l].router == nil ? [] : [p + "block_sparse_moe.gate"]
        case .head: return ["lm_head"]
        }
    }

    /// The frozen weight [out, in] of a module path, or nil if the model has none.
    public func linear(module: String) -> Matrix? {
        if module == "lm_head" { return lmHead }
        let parts = module.split(separator: ".").map(String.init)
        guard parts.count >= 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              l >= 0, l < layers.count else { return nil }
        let w = layers[l]
        switch parts[3...].joined(separator: ".") {
        case "self_attn.q_proj": return w.q
        case "self_attn.k_proj": return w.k
        case "self_attn.v_proj": return w.v
        case "self_attn.o_proj": return w.o
        case "mlp.gate_proj": return w.mlp?.gate
        case "mlp.up_proj": return w.mlp?.up
        case "mlp.down_proj": return w.mlp?.down
        case "block_sparse_moe.gate": return w.router
        case let rest where rest.hasPrefix("block_sparse_moe.experts."):
            let sub = rest.split(separator: ".")
            guard sub.count == 4, let e = Int(sub[2]), e >= 0, e < w.experts.count else { return nil }
            switch sub[3] {
            case "w1": return w.experts[e].gate
            case "w3": return w.experts[e].up
            case "w2": return w.experts[e].down
            default: return nil
            }
        default: return nil
        }
    }

    /// The module kind of a module path.
    public static func kind(of module: String) -> ModuleKind? {
        if module == "lm_head" { return .head }
        if module.hasSuffix("q_proj") { return .query }
        if module.hasSuffix("k_proj") { return .key }
        if module.hasSuffix("v_proj") { return .value }
        if module.hasSuffix("o_proj") { return .projection }
        if module.hasSuffix("block_sparse_moe.gate") { return .router }
        if module.hasSuffix("gate_proj") || module.hasSuffix("up_proj") || module.hasSuffix("down_proj")
            || module.hasSuffix(".w1") || module.hasSuffix(".w2") || module.hasSuffix(".w3") { return .mlp }
        return nil
    }
}
