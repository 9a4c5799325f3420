import Foundation
import MoEFormats
import MoEText

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
/// QLoRA), except the experts `modules_to_not_convert` names, which must be stored plain;
/// merging expert adapters writes them dequantized (Merger) and `moe-tune quantize` is refused.
/// Every field of the released config.json is read (gptOssFields); its yarn RoPE keeps
/// `truncate: false` (the correction range not rounded; Layers/RoPE.swift).
extension ModelFamily {
    public static let gptOss = ModelFamily(
        name: "gpt_oss", modelTypes: ["gpt_oss"],
        moe: MoENames(block: "mlp", router: "router", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp",
                      transposedInterleaved: true, expertCountKey: "num_local_experts"),
        defaults: FamilyDefaults(rmsNormEps: 1e-5, ropeTheta: 150000, maxPositionEmbeddings: 131072,
                                 bosTokenId: nil, eosTokenId: 2, routerAuxLossCoef: 0.001, headDim: 64),
        readConfig: { r, c in
            let bias = try r.optionalBool("attention_bias") ?? true
            c.qkvBias = bias
            c.oBias = bias
            c.routerBias = true
            c.attentionSinks = true
            // The released checkpoints: experts as MXFP4 blocks, dequantized to fp32 at load;
            // modules_to_not_convert (transformers' patterns) says which experts are not.
            if let v = r.json["quantization_config"], !(v is NSNull) {
                guard let q = v as? [String: Any] else {
                    throw MoETuneError.config(path: r.path, key: "quantization_config", message: "must be an object")
                }
                c.mxfp4 = try MXFP4Quantization.read(q, path: r.path)
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
            try readGptOssRest(r, &c)
        })
}

/// Every top-level field a GPT-OSS config.json may hold, so that none is ignored silently:
/// the fields ModelConfig.parse and the family read, the legacy fields of OpenAI's original
/// config that the released config.json still carries (checked against the fields that
/// replaced them), and metadata that does not change the computation.
private let gptOssFields: Set<String> = ModelConfig.sharedFields.union([
    "attention_bias", "quantization_config", "sliding_window", "layer_types", "num_local_experts",
    "num_experts_per_tok", "swiglu_alpha", "swiglu_limit", "output_router_logits",
    "attention_dropout", "experts_per_token", "initial_context_length",
    // No effect on the computation: the model class, writer version, generation cache
    // switch, random-init scale, storage dtype (read per tensor), padding id (moe-tune masks
    // padding by length), the folder it came from.
    "architectures", "transformers_version", "use_cache", "initializer_range", "dtype", "torch_dtype",
    "pad_token_id", "_name_or_path",
])

/// Keys of the rope_scaling / rope_parameters object RoPEScaling.read reads.
private let gptOssRopeFields: Set<String> = [
    "rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
    "truncate", "attention_factor", "mscale", "mscale_all_dim", "partial_rotary_factor",
]

/// The GPT-OSS fields beyond the architecture: refusals of what moe-tune does not implement
/// and transformers' defaults where the file is silent.
private func readGptOssRest(_ r: FieldReader, _ c: inout ModelConfig) throws {
    for key in r.json.keys.sorted() where !gptOssFields.contains(key) {
        throw MoETuneError.config(path: r.path, key: key, message: "field of a gpt_oss config that moe-tune does not implement")
    }
    for key in ["rope_scaling", "rope_parameters"] {
        guard let d = r.json[key] as? [String: Any] else { continue }
        for k in d.keys.sorted() where !gptOssRopeFields.contains(k) {
            throw MoETuneError.config(path: r.path, key: key + "." + k, message: "RoPE field that moe-tune does not implement")
        }
    }
    // Training-time attention dropout is not implemented (the released models have 0).
    if let p = try r.optionalDouble("attention_dropout"), p != 0 {
        throw MoETuneError.config(path: r.path, key: "attention_dropout", message: "attention dropout is not supported (got \(p)); use 0")
    }
    // OpenAI's original names, which transformers ignores: they must agree with the fields it reads.
    if let k = try r.optionalInt("experts_per_token"), k != c.expertsPerToken {
        throw MoETuneError.config(path: r.path, key: "experts_per_token",
            message: "\(k) disagrees with num_experts_per_tok \(c.expertsPerToken) (transformers routes with num_experts_per_tok)")
    }
    // Without rope_scaling / rope_parameters, transformers' GptOssConfig uses yarn: factor 32,
    // beta_fast 32, beta_slow 1, original_max_position_embeddings 4096, truncate false.
    let hasRope = [r.json["rope_scaling"], r.json["rope_parameters"]].contains { $0 != nil && !($0 is NSNull) }
    if !hasRope {
        c.ropeScaling = .yarn(factor: 32, originalMaxPositions: 4096, betaFast: 32, betaSlow: 1,
                              attentionFactor: 0.1 * Foundation.log(32.0) + 1, truncate: false)
    }
    if let n = try r.optionalInt("initial_context_length"), case let .yarn(_, original, _, _, _, _)? = c.ropeScaling,
       Double(n) != original {
        throw MoETuneError.config(path: r.path, key: "initial_context_length",
            message: "\(n) disagrees with the yarn original_max_position_embeddings \(Int(original))")
    }
}
