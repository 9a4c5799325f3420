import MoEFormats
import MoEText
/// Qwen2-MoE / Qwen1.5-MoE: Qwen2 attention (q/k/v biases, `qkv_bias`) and a sparse block
/// of `num_experts` SwiGLU experts of `moe_intermediate_size`, softmax over all router
/// logits, top-k, renormalised only with `norm_topk_prob` (default false), plus a shared
/// expert of `shared_expert_intermediate_size` added through sigmoid(shared_expert_gate(x)).
/// Layers in `mlp_only_layers`, and all but every `decoder_sparse_step`-th, keep a dense MLP
/// of `intermediate_size`. Tensors: mlp.gate, mlp.experts.E.{gate,up,down}_proj (or the
/// fused mlp.experts.gate_up_proj / down_proj of transformers 5), mlp.shared_expert.*,
/// mlp.shared_expert_gate. Aux loss: transformers' load_balancing_loss_func, coefficient
/// router_aux_loss_coef (default 0.001). Sliding windows (`use_sliding_window`) in the
/// layers of `layer_types`, or without it (transformers 5's Qwen2MoeConfig) in the even
/// layers l < `max_window_layers` (0, 2, 4, ...: not the rule of dense Qwen2).
extension ModelFamily {
    public static let qwen2MoE = ModelFamily(
        name: "qwen2_moe", modelTypes: ["qwen2_moe"],
        moe: MoENames(block: "mlp", router: "gate", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp",
                      sharedExpert: "shared_expert", sharedExpertGate: "shared_expert_gate"),
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768,
                                 bosTokenId: nil, eosTokenId: 151643, routerAuxLossCoef: 0.001),
        readConfig: { r, c in
            c.qkvBias = try r.optionalBool("qkv_bias") ?? true
            try r.readQwenSlidingWindow(&c) { l, maxWindowLayers in l % 2 == 0 && l < maxWindowLayers }
            try r.readExperts(&c, countKey: "num_experts", defaultCount: 60, defaultTopK: 4)
            try r.readSparseLayout(&c, defaultExpertIntermediate: 1408, defaultNormTopK: false)
            c.sharedExpertIntermediateSize = try r.optionalInt("shared_expert_intermediate_size") ?? 5632
            guard c.sharedExpertIntermediateSize > 0 else {
                throw MoETuneError.config(path: r.path, key: "shared_expert_intermediate_size", message: "must be positive")
            }
        },
        ggufArchitecture: "qwen2moe")
}
