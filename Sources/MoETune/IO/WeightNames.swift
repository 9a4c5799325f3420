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
