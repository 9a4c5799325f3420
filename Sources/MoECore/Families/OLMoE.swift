import MoEFormats
import MoEText
/// OLMoE: RMSNorm over the whole q and k projections (q_norm [hidden], k_norm [nKV*D])
/// before RoPE, optional `clip_qkv` clamping q, k (after their norm) and v, and a sparse
/// block of `num_experts` SwiGLU experts of `intermediate_size` with top-k not renormalised
/// (`norm_topk_prob` false by default). Tensors: self_attn.q_norm / k_norm, mlp.gate,
/// mlp.experts.E.{gate,up,down}_proj (or fused). Aux loss: load_balancing_loss_func with
/// router_aux_loss_coef (default 0.01).
extension ModelFamily {
    public static let olmoe = ModelFamily(
        name: "olmoe", modelTypes: ["olmoe"],
        moe: MoENames(block: "mlp", router: "gate", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp"),
        defaults: FamilyDefaults(rmsNormEps: 1e-5, ropeTheta: 10000, maxPositionEmbeddings: 4096,
                                 bosTokenId: nil, eosTokenId: 50279, routerAuxLossCoef: 0.01),
        readConfig: { r, c in
            c.qkNorm = .fullWidth
            try r.refuse("attention_bias", message: "q/k/v/o biases are not supported for olmoe")
            if let clip = try r.optionalDouble("clip_qkv") {
                guard clip > 0 else { throw MoETuneError.config(path: r.path, key: "clip_qkv", message: "must be positive") }
                c.clipQKV = Float(clip)
            }
            c.slidingWindow = nil
            let countKey = r.json["num_experts"] != nil ? "num_experts" : "num_local_experts"
            try r.readExperts(&c, countKey: countKey, defaultCount: 64, defaultTopK: 8)
            c.expertIntermediateSize = c.intermediateSize
            c.normTopKProb = try r.optionalBool("norm_topk_prob") ?? false
        },
        ggufArchitecture: "olmoe")
}
