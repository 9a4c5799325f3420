/// Qwen2 / Qwen2.5: the Llama layout with biases on q_proj, k_proj and v_proj (o_proj has
/// none; the biases stay frozen and full precision). Sliding-window attention is off
/// unless `use_sliding_window` is true, which moe-tune refuses (its per-layer form with
/// `max_window_layers` is not implemented).
extension ModelFamily {
    public static let qwen2 = ModelFamily(
        name: "qwen2", modelTypes: ["qwen2"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768,
                                 bosTokenId: nil, eosTokenId: 151643),
        readConfig: { r, c in
            c.qkvBias = true
            try r.refuse("use_sliding_window",
                         message: "sliding-window attention (with max_window_layers) is not supported for qwen2; set it to false")
            try r.refuse("mlp_bias", message: "biases in MLP layers are not supported")
            c.slidingWindow = nil
        })
}
