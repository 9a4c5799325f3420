import Foundation
import MoEFormats
import MoEText

/// ByteDance Seed-OSS (Seed-OSS-36B Base, Base-woSyn, Instruct), as transformers 5's
/// modeling_seed_oss computes it: the Llama layout (RMSNorm, RoPE, GQA, SwiGLU MLP, untied
/// head unless `tie_word_embeddings`) with biases on q_proj, k_proj and v_proj
/// (`attention_bias`, default true) and on o_proj (`attention_out_bias`, default false); the
/// biases stay frozen and full precision. head_dim defaults to 128, independent of
/// hidden_size / num_attention_heads (null: hidden_size / num_attention_heads). No sliding
/// window. `attention_dropout` and `residual_dropout` (0.1 in the released config.json) act in
/// transformers only while training: moe-tune's forward, eval and decoding equal
/// transformers' eval mode, and it trains without them (LoRA dropout is its own option).
/// `mlp_bias` is refused. GGUF: llama.cpp's "seed_oss" (NEOX RoPE, no q/k permutation;
/// post_attention_layernorm is `post_attention_norm`); it has no attn_output.bias, so a model
/// with `attention_out_bias` is not written to GGUF.
extension ModelFamily {
    public static let seedOss = ModelFamily(
        name: "seed_oss", modelTypes: ["seed_oss"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 524288,
                                 bosTokenId: 0, eosTokenId: 2, headDim: 128),
        readConfig: { r, c in
            c.qkvBias = try r.optionalBool("attention_bias") ?? true
            c.oBias = try r.optionalBool("attention_out_bias") ?? false
            try r.refuse("mlp_bias", message: "biases in MLP layers are not supported")
            try readSeedOssHeadDim(r, &c)
            for key in ["attention_dropout", "residual_dropout"] {
                if let p = try r.optionalDouble(key), !(0..<1).contains(p) {
                    throw MoETuneError.config(path: r.path, key: key, message: "must be in [0, 1), got \(p)")
                }
            }
            // SeedOssConfig has no sliding window.
            c.slidingWindow = nil
        },
        ggufArchitecture: "seed_oss")
}

/// `head_dim: null` means hidden_size / num_attention_heads in SeedOssConfig (ModelConfig.parse
/// took the family default 128 for it, as for an absent field).
private func readSeedOssHeadDim(_ r: FieldReader, _ c: inout ModelConfig) throws {
    guard r.json["head_dim"] is NSNull else { return }
    let d = c.hiddenSize / c.numHeads
    guard d > 0, d % 2 == 0 else {
        throw MoETuneError.config(path: r.path, key: "head_dim",
            message: "null gives hidden_size / num_attention_heads = \(d), which must be a positive even number")
    }
    c.headDim = d
}
