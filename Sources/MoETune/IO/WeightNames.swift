/// The one place that knows Hugging Face tensor names of Llama, Mistral and Mixtral
/// checkpoints. Everything else asks here.
public enum WeightNames {
    public static let embedTokens = "model.embed_tokens.weight"
    public static let finalNorm = "model.norm.weight"
    public static let lmHead = "lm_head.weight"

    public static func layerPrefix(_ l: Int) -> String { "model.layers.\(l)." }

    /// Attention projections: "q_proj", "k_proj", "v_proj", "o_proj".
    public static func attention(_ l: Int, _ proj: String) -> String { "model.layers.\(l).self_attn.\(proj).weight" }
    public static func inputNorm(_ l: Int) -> String { "model.layers.\(l).input_layernorm.weight" }
    public static func postAttentionNorm(_ l: Int) -> String { "model.layers.\(l).post_attention_layernorm.weight" }

    /// Dense MLP: "gate_proj", "up_proj", "down_proj".
    public static func mlp(_ l: Int, _ proj: String) -> String { "model.layers.\(l).mlp.\(proj).weight" }

    /// Mixtral router [E, hidden].
    public static func router(_ l: Int) -> String { "model.layers.\(l).block_sparse_moe.gate.weight" }
    /// Mixtral expert: "w1" (gate [inter, hidden]), "w3" (up [inter, hidden]), "w2" (down [hidden, inter]).
    public static func expert(_ l: Int, _ e: Int, _ w: String) -> String {
        "model.layers.\(l).block_sparse_moe.experts.\(e).\(w).weight"
    }

    /// The layout transformers 5 writes with save_pretrained: router under mlp.gate and
    /// experts fused, gate_up_proj [E, 2*inter, hidden] (rows 0..<inter are w1, the
    /// rest w3) and down_proj [E, hidden, inter].
    public static func fusedRouter(_ l: Int) -> String { "model.layers.\(l).mlp.gate.weight" }
    public static func fusedGateUp(_ l: Int) -> String { "model.layers.\(l).mlp.experts.gate_up_proj" }
    public static func fusedDown(_ l: Int) -> String { "model.layers.\(l).mlp.experts.down_proj" }
}

extension WeightNames {
    /// Maps a module path of another layout onto moe-tune's: transformers 5 calls the
    /// Mixtral router "mlp.gate" where checkpoints say "block_sparse_moe.gate".
    public static func canonicalModule(_ module: String, isMoE: Bool) -> String {
        if isMoE, module.hasSuffix(".mlp.gate") {
            return String(module.dropLast(".mlp.gate".count)) + ".block_sparse_moe.gate"
        }
        return module
    }

    /// The transformers 5 name of a Mixtral router module ("mlp.gate").
    public static func transformers5Module(_ module: String) -> String {
        module.replacingOccurrences(of: ".block_sparse_moe.gate", with: ".mlp.gate")
    }

    /// peft's fused-expert adapter modules (transformers 5, target_parameters):
    /// "model.layers.N.mlp.experts.base_layer" holds gate_up_proj's adapter and
    /// "model.layers.N.mlp.experts" holds down_proj's.
    public static func fusedExpertAdapter(_ module: String) -> (layer: Int, gateUp: Bool)? {
        let parts = module.split(separator: ".")
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              parts[3] == "mlp", parts[4] == "experts" else { return nil }
        if parts.count == 5 { return (l, false) }
        if parts.count == 6, parts[5] == "base_layer" { return (l, true) }
        return nil
    }
}
