import MoEFormats
import MoEText
/// Qwen3: the Llama layout plus an RMSNorm over each head's head_dim values of q and k
/// (self_attn.q_norm / k_norm, weight [head_dim]) before RoPE; head_dim defaults to 128,
/// independent of hidden_size / num_attention_heads. No biases unless `attention_bias`
/// (q/k/v/o biases), which moe-tune refuses. Sliding windows as Qwen2 (`use_sliding_window`:
/// layers l >= `max_window_layers`, or as `layer_types` says).
extension ModelFamily {
    public static let qwen3 = ModelFamily(
        name: "qwen3", modelTypes: ["qwen3"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768,
                                 bosTokenId: nil, eosTokenId: 151643, headDim: 128),
        readConfig: { r, c in
            c.qkNorm = .perHead
            try r.refuse("attention_bias", message: "q/k/v/o biases are not supported for qwen3")
            try r.readQwenSlidingWindow(&c) { l, maxWindowLayers in l >= maxWindowLayers }
        },
        ggufArchitecture: "qwen3")
}
