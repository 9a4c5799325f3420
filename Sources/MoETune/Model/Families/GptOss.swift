import Foundation

/// GPT-OSS, as transformers 5's modeling_gpt_oss computes it: Llama attention with biases on
/// q, k, v and o (`attention_bias`, default true) and a learned sink logit per head joining
/// each softmax row's denominator (self_attn.sinks [nH], frozen); `layer_types` alternating
/// sliding (`sliding_window`, default 128) and full attention (without layer_types: even layers
/// sliding); an MoE block in every layer: router mlp.router (weight and bias) whose softmax runs
/// over the top-k logits (top-k of the softmax renormalised, `normTopKProb`), and
/// `num_local_experts` experts with biases stored fused and transposed, gate/up interleaved
/// (see `MoENames.transposedInterleaved`), activation the clamped SwiGLU (`swiglu_alpha`,
/// `swiglu_limit`; Layers/ClampedSwiGLU.swift).
/// Aux loss: transformers 5 adds load_balancing_loss_func times router_aux_loss_coef only with
/// `output_router_logits` (default false), so the default coefficient is that flag's choice.
/// Trains LoRA on every target (the experts' backward through ClampedSwiGLU.backward; biases
/// and sinks frozen); PEFT adapters in peft's fused target_parameters layout both ways
/// (PEFTAdapter), merge into this layout (Merger), QLoRA with each fused expert tensor
/// quantized whole (TransposedWeight). MXFP4 experts (`quantization_config` quant_method
/// mxfp4, the released checkpoints) are dequantized to fp32 at load (re-quantized to NF4 with
/// QLoRA); merging expert adapters into them and `moe-tune quantize` are refused.
extension ModelFamily {
    public static let gptOss = ModelFamily(
        name: "gpt_oss", modelTypes: ["gpt_oss"],
        moe: MoENames(block: "mlp", router: "router", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp",
                      transposedInterleaved: true),
        defaults: FamilyDefaults(rmsNormEps: 1e-5, ropeTheta: 150000, maxPositionEmbeddings: 131072,
                                 bosTokenId: nil, eosTokenId: 2, routerAuxLossCoef: 0.001, headDim: 64),
        readConfig: { r, c in
            let bias = try r.optionalBool("attention_bias") ?? true
            c.qkvBias = bias
            c.oBias = bias
            c.routerBias = true
            c.attentionSinks = true
            // The released checkpoints: experts as MXFP4 blocks, dequantized to fp32 at load.
            if let q = r.json["quantization_config"] as? [String: Any] {
                let method = q["quant_method"] as? String ?? "?"
                guard method == "mxfp4" else {
                    throw MoETuneError.config(path: r.path, key: "quantization_config",
                        message: "quant_method '\(method)' is not supported for gpt_oss (mxfp4 is)")
                }
            } else if r.json["quantization_config"] != nil {
                throw MoETuneError.config(path: r.path, key: "quantization_config", message: "must be an object")
            }
            let w = try r.optionalInt("sliding_window") ?? 128
            guard w > 0 else { throw MoETuneError.config(path: r.path, key: "sliding_window", message: "must be positive, got \(w)") }
            c.slidingWindow = w
            if let v = r.json["layer_types"], !(v is NSNull) {
                guard let list = v as? [String], list.count == c.numLayers,
                      list.allSatisfy({ $0 == "full_attention" || $0 == "sliding_attention" }) else {
                    throw MoETuneError.config(path: r.path, key: "layer_types",
                        message: "expected \(c.numLayers) entries, each \"full_attention\" or \"sliding_attention\"")
                }
                c.slidingLayers = Set((0..<c.numLayers).filter { list[$0] == "sliding_attention" })
            } else {
                c.slidingLayers = Set((0..<max(c.numLayers, 0)).filter { $0 % 2 == 0 })
            }
            try r.readExperts(&c, countKey: "num_local_experts", defaultCount: 128, defaultTopK: 4)
            c.expertIntermediateSize = c.intermediateSize
            c.normTopKProb = true
            let alpha = try r.optionalDouble("swiglu_alpha") ?? 1.702, limit = try r.optionalDouble("swiglu_limit") ?? 7
            guard alpha.isFinite, limit.isFinite, limit > 0 else {
                throw MoETuneError.config(path: r.path, key: "swiglu_limit", message: "swiglu_alpha and swiglu_limit must be finite, the limit positive")
            }
            c.clampedSwiGLU = ClampedSwiGLU(alpha: Float(alpha), limit: Float(limit))
            if try r.optionalBool("output_router_logits") != true { c.routerAuxLossCoef = 0 }
        })
}
