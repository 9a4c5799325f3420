import MoEFormats
import MoEText
/// Mixtral: Mistral attention and a sparse MoE block of `num_local_experts` SwiGLU
/// experts, softmax over all router logits, top-k renormalised. Checkpoints store
/// block_sparse_moe.gate and block_sparse_moe.experts.E.{w1 (gate), w3 (up), w2 (down)};
/// transformers 5 saves mlp.gate and the fused mlp.experts.gate_up_proj / down_proj.
extension ModelFamily {
    public static let mixtral = ModelFamily(
        name: "mixtral", modelTypes: ["mixtral"],
        moe: MoENames(block: "block_sparse_moe", router: "gate", expertParts: ["w1", "w3", "w2"], fusedBlock: "mlp", expertCountKey: "num_local_experts"),
        defaults: FamilyDefaults(rmsNormEps: 1e-5, ropeTheta: 1e6, maxPositionEmbeddings: 4096, routerAuxLossCoef: 0.001),
        readConfig: { r, c in
            try r.refuse("attention_bias", message: "biases in linear layers are not supported")
            try r.refuse("mlp_bias", message: "biases in linear layers are not supported")
            c.slidingWindow = try r.optionalInt("sliding_window")
            try r.readExperts(&c, countKey: "num_local_experts", defaultCount: 8, defaultTopK: 2)
        },
        ggufArchitecture: "llama")
}
