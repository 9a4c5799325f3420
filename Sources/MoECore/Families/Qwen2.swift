import MoEFormats
import MoEText
/// Qwen2 / Qwen2.5: the Llama layout with biases on q_proj, k_proj and v_proj (o_proj has
/// none; the biases stay frozen and full precision). Sliding-window attention is off
/// unless `use_sliding_window` is true; then `sliding_window` applies in the layers
/// `layer_types` names sliding_attention, or without layer_types in layers
/// l >= `max_window_layers` (transformers 5's Qwen2Config).
extension ModelFamily {
    public static let qwen2 = ModelFamily(
        name: "qwen2", modelTypes: ["qwen2"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768,
                                 bosTokenId: nil, eosTokenId: 151643),
        readConfig: { r, c in
            c.qkvBias = true
            try r.refuse("mlp_bias", message: "biases in MLP layers are not supported")
            try r.readQwenSlidingWindow(&c) { l, maxWindowLayers in l >= maxWindowLayers }
        },
        ggufArchitecture: "qwen2")
}
