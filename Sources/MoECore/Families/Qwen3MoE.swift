import MoEFormats
import MoEText
/// Qwen3-MoE: Qwen3 attention (per-head q/k RMSNorm, no biases) and the Qwen2-MoE routing
/// without a shared expert: `num_experts` experts of `moe_intermediate_size`, top-k
/// renormalised only with `norm_topk_prob`, `mlp_only_layers` / `decoder_sparse_step`.
/// Tensors as Qwen2-MoE (mlp.gate, mlp.experts.E.{gate,up,down}_proj or fused).
/// `use_sliding_window`: transformers 5's Qwen3-MoE has no layer_types and masks every
/// layer with `sliding_window` (max_window_layers is not read).
extension ModelFamily {
    public static let qwen3MoE = ModelFamily(
        name: "qwen3_moe", modelTypes: ["qwen3_moe"],
        moe: MoENames(block: "mlp", router: "gate", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp"),
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768,
                                 bosTokenId: nil, eosTokenId: 151643, routerAuxLossCoef: 0.001),
        readConfig: { r, c in
            c.qkNorm = .perHead
            try r.refuse("attention_bias", message: "q/k/v/o biases are not supported for qwen3_moe")
            if try r.optionalBool("use_sliding_window") == true {
                c.slidingWindow = try r.optionalInt("sliding_window") ?? 4096
                guard c.slidingWindow! > 0 else {
                    throw MoETuneError.config(path: r.path, key: "sliding_window", message: "must be positive")
                }
            } else {
                c.slidingWindow = nil
            }
            // Hub files say num_experts; transformers 5 saves it as num_local_experts (attribute_map).
            let countKey = r.json["num_experts"] != nil ? "num_experts" : "num_local_experts"
            try r.readExperts(&c, countKey: countKey, defaultCount: 128, defaultTopK: 8)
            try r.readSparseLayout(&c, defaultExpertIntermediate: 768, defaultNormTopK: false)
        },
        ggufArchitecture: "qwen3moe")
}
