import MoEFormats
import MoEText
/// Granite-MoE (IBM Granite 3.x MoE): Llama attention and a sparse block of
/// `num_local_experts` SwiGLU experts of `intermediate_size`; the router takes the top-k
/// logits and a softmax over those k (the same weights as a softmax over all logits,
/// top-k, renormalised), plus four multipliers: the embeddings times `embedding_multiplier`,
/// q k^T times `attention_multiplier` (instead of 1 / sqrt(head_dim)), each sublayer's output
/// times `residual_multiplier` before its residual add, and the logits divided by
/// `logits_scaling` (all default 1). Embeddings usually tied.
/// Tensors: Granite's checkpoints (and transformers 5's save_pretrained, which renames back)
/// store the experts fused, block_sparse_moe.input_linear.weight [E, 2*I, H] (rows 0..<I gate,
/// the rest up) and block_sparse_moe.output_linear.weight [E, H, I], and the router
/// block_sparse_moe.router.layer.weight [E, H]; transformers 5 names them in memory
/// block_sparse_moe.experts.gate_up_proj / down_proj and block_sparse_moe.router.weight, and
/// reads either. moe-tune reads both and merges back in the layout it read. Per-expert LoRA
/// modules are moe-tune's own names, block_sparse_moe.experts.E.{gate,up,down}_proj (no
/// such module exists in transformers); the router module is block_sparse_moe.router.
/// Aux loss: load_balancing_loss_func (Switch), coefficient router_aux_loss_coef (default 0.001).
extension ModelFamily {
    public static let graniteMoE = ModelFamily(
        name: "granitemoe", modelTypes: ["granitemoe"],
        moe: MoENames(block: "block_sparse_moe", router: "router", expertParts: ["gate_proj", "up_proj", "down_proj"],
                      fusedBlock: "block_sparse_moe",
                      checkpointFused: .init(router: "router.layer", gateUp: "input_linear", down: "output_linear"),
                      expertCountKey: "num_local_experts"),
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048,
                                 bosTokenId: 1, eosTokenId: 2, routerAuxLossCoef: 0.001),
        readConfig: { r, c in
            try r.refuse("attention_bias", message: "q/k/v/o biases are not supported for granitemoe")
            try r.refuse("mlp_bias", message: "biases in linear layers are not supported")
            c.slidingWindow = nil
            try r.readExperts(&c, countKey: "num_local_experts", defaultCount: 8, defaultTopK: 2)
            c.expertIntermediateSize = c.intermediateSize
            c.normTopKProb = true
            func multiplier(_ key: String) throws -> Float {
                let v = try r.optionalDouble(key) ?? 1
                guard v.isFinite, v > 0 else {
                    throw MoETuneError.config(path: r.path, key: key, message: "must be a positive number, got \(v)")
                }
                return Float(v)
            }
            c.embeddingMultiplier = try multiplier("embedding_multiplier")
            c.attentionMultiplier = try multiplier("attention_multiplier")
            c.residualMultiplier = try multiplier("residual_multiplier")
            c.logitsScaling = try multiplier("logits_scaling")
        },
        ggufArchitecture: "granitemoe")
}
