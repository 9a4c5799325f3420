import Foundation
import MoEFormats
import MoEText

/// One tensor of a model as llama.cpp stores it in GGUF: its GGUF name; for llama.cpp's
/// "NORM" RoPE architectures (llama, granitemoe) the head count of the row permutation of q
/// and k (convert_hf_to_gguf's `permute`: within each head the rows of the two rotate_half
/// halves are interleaved, HF row h*D + s*D/2 + j is GGUF row h*D + 2j + s), which reading
/// undoes and writing redoes; and for an expert, its index in the 3-D GGUF tensor
/// (ffn_*_exps [E, rows, cols], row-major) that stacks every expert of the layer.
public struct GGUFTensorName: Sendable, Equatable {
    public let hf: String
    public let gguf: String
    public let permuteHeads: Int?
    public var expert: Int? = nil
}

/// llama.cpp's names for a family's tensors and hyper-parameters, as convert_hf_to_gguf.py
/// writes them and src/llama-model.cpp reads them (gguf-py's constants.py and
/// tensor_mapping.py), for the families with a `ggufArchitecture`:
///
///   llama        llama (dense) and, with `llama.expert_count` > 0, mixtral; q/k permuted
///   qwen2        q/k/v biases (attn_{q,k,v}.bias)
///   qwen3        per-head q/k RMSNorm (attn_q_norm / attn_k_norm [head_dim])
///   qwen2moe     biases, experts of expert_feed_forward_length, shared expert
///                ffn_{gate,up,down}_shexp of expert_shared_feed_forward_length and its gate
///                ffn_gate_inp_shexp; a layer without ffn_gate_inp keeps a dense MLP
///   qwen3moe     per-head q/k norms, experts; top-k weights renormalised
///   olmoe        q/k RMSNorm over the whole projection; top-k weights not renormalised
///   granitemoe   experts, q/k permuted, attention.scale, embedding_scale, residual_scale,
///                logit_scale (the four Granite multipliers)
///   seed_oss     q/k/v biases when present; the MLP norm is post_attention_norm; no
///                attn_output.bias (llama.cpp refuses the file), so no o_proj bias
///
/// Experts: ffn_gate_inp [E, H] is the router, ffn_{gate,up,down}_exps the stacked experts.
/// Whether top-k weights are renormalised is llama.cpp's per-architecture constant
/// (`ARCH.expert_weights_norm` overrides it where present). RoPE: `rope.scaling.type`
/// linear / yarn (factor, original_context_length, yarn_beta_fast / yarn_beta_slow,
/// attn_factor) and Llama 3.1's `rope_freqs.weight` (a divisor per frequency).
extension ModelFamily {
    /// The family of a GGUF architecture; "llama" with experts is Mixtral.
    public static func forGGUFArchitecture(_ arch: String, experts: Int = 0) -> ModelFamily? {
        if arch == "llama" { return experts > 0 ? .mixtral : .llama }
        return all.first { $0.ggufArchitecture == arch }
    }
    public static var supportedGGUFArchitectures: [String] {
        var out: [String] = []
        for a in all.compactMap(\.ggufArchitecture) where !out.contains(a) { out.append(a) }
        return out
    }

    /// llama.cpp's "NORM" RoPE (the converter permutes q and k rows); the others are NEOX.
    package var ggufPermutesQK: Bool { self == .llama || self == .mixtral || self == .graniteMoE }

    /// The GGUF name of a layer's norm before the MLP (post_attention_layernorm).
    package var ggufFeedForwardNorm: String { self == .seedOss ? "post_attention_norm.weight" : "ffn_norm.weight" }

    /// Whether llama.cpp renormalises the top-k router weights of this architecture.
    package var ggufNormTopK: Bool { !(self == .qwen2MoE || self == .olmoe) }

    /// Every tensor of a model of config `c`, Hugging Face name beside the GGUF one;
    /// `lm_head` only when `c` does not tie it to the embedding.
    public func ggufTensorNames(_ c: ModelConfig) -> [GGUFTensorName] {
        var out = [GGUFTensorName(hf: embedTokens, gguf: "token_embd.weight", permuteHeads: nil),
                   GGUFTensorName(hf: finalNorm, gguf: "output_norm.weight", permuteHeads: nil)]
        if !c.tieWordEmbeddings { out.append(GGUFTensorName(hf: lmHead, gguf: "output.weight", permuteHeads: nil)) }
        let permute = ggufPermutesQK
        let parts: [(FeedForwardPart, String)] = [(.gate, "gate"), (.up, "up"), (.down, "down")]
        for l in 0..<c.numLayers {
            let b = "blk.\(l)."
            var pairs: [(String, String, Int?)] = [
                (inputNorm(l), "attn_norm.weight", nil),
                (postAttentionNorm(l), ggufFeedForwardNorm, nil),
                (weight(.q, layer: l), "attn_q.weight", permute ? c.numHeads : nil),
                (weight(.k, layer: l), "attn_k.weight", permute ? c.numKVHeads : nil),
                (weight(.v, layer: l), "attn_v.weight", nil),
                (weight(.o, layer: l), "attn_output.weight", nil),
            ]
            if c.qkvBias {
                pairs += [(bias(.q, layer: l), "attn_q.bias", nil), (bias(.k, layer: l), "attn_k.bias", nil),
                          (bias(.v, layer: l), "attn_v.bias", nil)]
            }
            if c.qkNorm != nil { pairs += [(qNorm(l), "attn_q_norm.weight", nil), (kNorm(l), "attn_k_norm.weight", nil)] }
            if c.isMoELayer(l) {
                pairs.append((weight(.router, layer: l), "ffn_gate_inp.weight", nil))
                for (p, s) in parts {
                    for e in 0..<c.numExperts {
                        out.append(GGUFTensorName(hf: weight(.expert(e, p), layer: l), gguf: b + "ffn_\(s)_exps.weight", permuteHeads: nil, expert: e))
                    }
                }
                if c.sharedExpertIntermediateSize > 0 {
                    pairs += parts.map { (weight(.shared($0.0), layer: l), "ffn_\($0.1)_shexp.weight", nil) }
                    if moe?.sharedExpertGate != nil { pairs.append((weight(.sharedGate, layer: l), "ffn_gate_inp_shexp.weight", nil)) }
                }
            } else {
                pairs += parts.map { (weight(.mlp($0.0), layer: l), "ffn_\($0.1).weight", nil) }
            }
            out += pairs.map { GGUFTensorName(hf: $0.0, gguf: b + $0.1, permuteHeads: $0.2) }
        }
        return out
    }

    /// The metadata keys of the expert count and of the experts used per token.
    public var ggufExpertCountKey: String { (ggufArchitecture ?? name) + ".expert_count" }
    public var ggufExpertUsedCountKey: String { (ggufArchitecture ?? name) + ".expert_used_count" }

    /// The model configuration a GGUF's metadata gives (`ARCH.block_count`,
    /// `ARCH.embedding_length`, …, `tokenizer.ggml.*` for the token ids); every size is
    /// checked, and what moe-tune does not implement is refused, naming the key.
    public static func config(gguf f: GGUFFile) throws -> ModelConfig {
        guard let arch = try f.string("general.architecture") else {
            throw MoETuneError.file(path: f.path, message: "metadata 'general.architecture' is missing")
        }
        let m = GGUFMetadata(f: f, arch: arch)
        let family = try ggufFamily(m)
        let hidden = try m.positive("embedding_length")
        let (heads, kvHeads, headDim) = try ggufAttentionShape(m, hidden: hidden)
        let tokens = try f.strings("tokenizer.ggml.tokens")
        let vocab = try m.positive("vocab_size", try f.int(m.k("vocab_size")) ?? tokens?.count ?? f.tensor("token_embd.weight")?.shape.first)
        let eps = try f.double(m.k("attention.layer_norm_rms_epsilon")) ?? family.defaults.rmsNormEps
        let eos = try f.int("tokenizer.ggml.eos_token_id")
        let ffn = try m.positive("feed_forward_length")
        let maxPositions = try m.positive("context_length", try f.int(m.k("context_length")) ?? family.defaults.maxPositionEmbeddings)
        var c = ModelConfig(
            family: family, hiddenSize: hidden, intermediateSize: ffn,
            numLayers: try m.positive("block_count"),
            numHeads: heads, numKVHeads: kvHeads, headDim: headDim,
            rmsNormEps: Float(eps), ropeTheta: try f.double(m.k("rope.freq_base")) ?? family.defaults.ropeTheta,
            vocabSize: vocab, tieWordEmbeddings: f.tensor("output.weight") == nil,
            bosTokenId: try f.int("tokenizer.ggml.bos_token_id").map { try m.tokenId($0, "tokenizer.ggml.bos_token_id", vocab: vocab) },
            eosTokenIds: try eos.map { [try m.tokenId($0, "tokenizer.ggml.eos_token_id", vocab: vocab)] } ?? [],
            numExperts: 0, expertsPerToken: 0, routerAuxLossCoef: Float(family.defaults.routerAuxLossCoef),
            slidingWindow: nil, maxPositionEmbeddings: maxPositions)
        c.expertIntermediateSize = ffn
        c.ropeScaling = try ropeScaling(f, arch: arch, headDim: headDim, maxPositions: maxPositions)
        try ggufFamilyOptions(&c, m)
        if family.moe != nil { try ggufExperts(&c, m) }
        return c
    }

    /// The family of `general.architecture` (with the expert count telling the MoE variant);
    /// an expert count must agree with whether the family has experts.
    static func ggufFamily(_ m: GGUFMetadata) throws -> ModelFamily {
        let f = m.f, arch = m.arch, key = m.k("expert_count")
        let experts = try f.int(key) ?? 0
        guard let family = forGGUFArchitecture(arch, experts: experts) else {
            throw MoETuneError.file(path: f.path, message: "architecture \(Printable.quoted(arch)) is not supported for GGUF (supported: \(supportedGGUFArchitectures.joined(separator: ", ")))")
        }
        if experts > 0, family.moe == nil {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(key)) is \(experts): the \(arch) architecture has no experts in moe-tune")
        }
        if family.moe != nil, experts <= 0 {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(key)) is missing or not positive for the mixture-of-experts architecture \(arch)")
        }
        return family
    }

    /// Heads, KV heads (dividing the heads) and the head size (the key length; the value
    /// length and the rotary dimensions equal to it, and even).
    static func ggufAttentionShape(_ m: GGUFMetadata, hidden: Int) throws -> (heads: Int, kvHeads: Int, headDim: Int) {
        let f = m.f
        let heads = try m.positive("attention.head_count")
        let kvHeads = try m.positive("attention.head_count_kv", try f.int(m.k("attention.head_count_kv")) ?? heads)
        guard heads % kvHeads == 0 else {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(m.k("attention.head_count_kv"))) \(kvHeads) does not divide the head count \(heads)")
        }
        let headDim = try m.positive("attention.key_length", try f.int(m.k("attention.key_length")) ?? hidden / heads)
        if let v = try f.int(m.k("attention.value_length")), v != headDim {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(m.k("attention.value_length"))) \(v) differs from the key length \(headDim) (not supported)")
        }
        if let r = try f.int(m.k("rope.dimension_count")), r != headDim {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(m.k("rope.dimension_count"))) \(r) is not the head size \(headDim) (partial rotary embeddings are not supported)")
        }
        guard headDim % 2 == 0 else { throw MoETuneError.file(path: f.path, message: "head size \(headDim) must be even") }
        return (heads, kvHeads, headDim)
    }

    /// What a family sets beyond the common keys: biases, q/k norms, clamping, Granite's multipliers.
    static func ggufFamilyOptions(_ c: inout ModelConfig, _ m: GGUFMetadata) throws {
        let family = c.family, f = m.f
        if family == .qwen2 || family == .qwen2MoE || family == .seedOss { c.qkvBias = f.tensor("blk.0.attn_q.bias") != nil }
        if family == .qwen3 || family == .qwen3MoE { c.qkNorm = .perHead }
        if family == .olmoe {
            c.qkNorm = .fullWidth
            c.clipQKV = try m.factor("attention.clamp_kqv").map(Float.init)
        }
        if family == .graniteMoE {
            c.embeddingMultiplier = Float(try m.factor("embedding_scale") ?? 1)
            c.attentionMultiplier = try m.factor("attention.scale").map(Float.init)
            c.residualMultiplier = Float(try m.factor("residual_scale") ?? 1)
            c.logitsScaling = Float(try m.factor("logit_scale") ?? 1)
        }
    }

    /// Experts, experts per token (at most the experts), their width, the top-k
    /// normalisation, Qwen2-MoE's shared expert, and the layers without a router.
    static func ggufExperts(_ c: inout ModelConfig, _ m: GGUFMetadata) throws {
        let f = m.f
        c.numExperts = try m.positive("expert_count")
        c.expertsPerToken = try m.positive("expert_used_count")
        guard c.expertsPerToken <= c.numExperts else {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(m.k("expert_used_count"))) \(c.expertsPerToken) exceeds the \(c.numExperts) experts")
        }
        if let e = try f.int(m.k("expert_feed_forward_length")) { c.expertIntermediateSize = try m.positive("expert_feed_forward_length", e) }
        c.normTopKProb = try f.bool(m.k("expert_weights_norm")) ?? c.family.ggufNormTopK
        if c.family == .qwen2MoE {
            c.sharedExpertIntermediateSize = try f.int(m.k("expert_shared_feed_forward_length"))
                .map { try m.positive("expert_shared_feed_forward_length", $0) } ?? 0
        }
        // A layer without a router keeps the dense MLP (qwen2moe's mlp_only_layers).
        c.mlpOnlyLayers = (0..<c.numLayers).filter { f.tensor("blk.\($0).ffn_gate_inp.weight") == nil }
    }

    /// `ARCH.rope.scaling.*` and `rope_freqs.weight`, as llama.cpp reads them.
    package static func ropeScaling(_ f: GGUFFile, arch: String, headDim: Int, maxPositions: Int) throws -> RoPEScaling? {
        let k = { (s: String) in arch + ".rope.scaling." + s }
        if let t = f.tensor("rope_freqs.weight") {
            guard t.shape == [headDim / 2] else {
                throw MoETuneError.file(path: f.path, message: "tensor 'rope_freqs.weight' has shape \(t.shape), expected [\(headDim / 2)] (half the head size)")
            }
            let v = try f.floats("rope_freqs.weight")
            if let bad = v.first(where: { !($0.isFinite && $0 > 0) }) {
                throw MoETuneError.file(path: f.path, message: "tensor 'rope_freqs.weight' holds \(bad); every frequency divisor must be positive")
            }
            return .frequencyFactors(v.map(Double.init))
        }
        let type = try f.string(k("type")) ?? "none"
        func value(_ key: String) throws -> Double? {
            guard let v = try f.double(k(key)) else { return nil }
            guard v.isFinite, v > 0 else { throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k(key))) must be a positive number, got \(v)") }
            return v
        }
        switch type {
        case "none":
            return nil
        case "linear":
            guard let factor = try value("factor") else { throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k("factor"))) is missing for linear RoPE scaling") }
            return factor == 1 ? nil : .linear(factor: factor)
        case "yarn":
            guard let factor = try value("factor") else { throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k("factor"))) is missing for YaRN") }
            let original = try f.int(k("original_context_length")).map(Double.init) ?? Double(maxPositions) / factor
            let attention = try value("attn_factor") ?? yarnAttentionFactor(factor)
            return .yarn(factor: factor, originalMaxPositions: original, betaFast: try value("yarn_beta_fast") ?? 32,
                         betaSlow: try value("yarn_beta_slow") ?? 1, attentionFactor: attention, truncate: true)
        default:
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k("type"))) is \(Printable.quoted(type)): RoPE scaling \(Printable.quoted(type)) is not supported for GGUF models (supported: none, linear, yarn, rope_freqs.weight)")
        }
    }

    /// YaRN's default attention factor (transformers' and llama.cpp's mscale).
    package static func yarnAttentionFactor(_ factor: Double) -> Double { factor <= 1 ? 1 : 0.1 * Foundation.log(factor) + 1 }

    /// The GGUF metadata of config `c` under llama.cpp's keys (the reverse of `config(gguf:)`).
    public func ggufMetadata(_ c: ModelConfig) -> [(String, GGUFValue)] {
        let a = ggufArchitecture ?? name
        var out: [(String, GGUFValue)] = [
            ("general.architecture", .string(a)),
            (a + ".block_count", .uint32(UInt32(c.numLayers))),
            (a + ".context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
            (a + ".embedding_length", .uint32(UInt32(c.hiddenSize))),
            (a + ".feed_forward_length", .uint32(UInt32(c.isMoE && (self == .mixtral || self == .olmoe || self == .graniteMoE) ? c.expertIntermediateSize : c.intermediateSize))),
            (a + ".attention.head_count", .uint32(UInt32(c.numHeads))),
            (a + ".attention.head_count_kv", .uint32(UInt32(c.numKVHeads))),
            (a + ".attention.key_length", .uint32(UInt32(c.headDim))),
            (a + ".attention.value_length", .uint32(UInt32(c.headDim))),
            (a + ".rope.dimension_count", .uint32(UInt32(c.headDim))),
            (a + ".rope.freq_base", .float32(Float(c.ropeTheta))),
            (a + ".attention.layer_norm_rms_epsilon", .float32(c.rmsNormEps)),
            (a + ".vocab_size", .uint32(UInt32(c.vocabSize))),
        ]
        if c.isMoE {
            out += [(ggufExpertCountKey, .uint32(UInt32(c.numExperts))), (ggufExpertUsedCountKey, .uint32(UInt32(c.expertsPerToken)))]
            if self == .qwen2MoE || self == .qwen3MoE { out.append((a + ".expert_feed_forward_length", .uint32(UInt32(c.expertIntermediateSize)))) }
            if c.sharedExpertIntermediateSize > 0 { out.append((a + ".expert_shared_feed_forward_length", .uint32(UInt32(c.sharedExpertIntermediateSize)))) }
            if c.normTopKProb != ggufNormTopK { out.append((a + ".expert_weights_norm", .bool(c.normTopKProb))) }
        }
        if let clip = c.clipQKV { out.append((a + ".attention.clamp_kqv", .float32(clip))) }
        if self == .graniteMoE {
            if let m = c.attentionMultiplier { out.append((a + ".attention.scale", .float32(m))) }
            out += [(a + ".embedding_scale", .float32(c.embeddingMultiplier)), (a + ".residual_scale", .float32(c.residualMultiplier)),
                    (a + ".logit_scale", .float32(c.logitsScaling))]
        }
        switch c.ropeScaling {
        case .linear(let factor)?:
            out += [(a + ".rope.scaling.type", .string("linear")), (a + ".rope.scaling.factor", .float32(Float(factor)))]
        case let .yarn(factor, original, fast, slow, attention, _)?:
            out += [(a + ".rope.scaling.type", .string("yarn")), (a + ".rope.scaling.factor", .float32(Float(factor))),
                    (a + ".rope.scaling.original_context_length", .uint32(UInt32(original))),
                    (a + ".rope.scaling.yarn_beta_fast", .float32(Float(fast))), (a + ".rope.scaling.yarn_beta_slow", .float32(Float(slow)))]
            // llama.cpp derives 0.1 ln(factor) + 1 itself; only another factor is written.
            if abs(attention - Self.yarnAttentionFactor(factor)) > 1e-9 { out.append((a + ".rope.scaling.attn_factor", .float32(Float(attention)))) }
        default: break
        }
        return out
    }

    /// `rope_freqs.weight` [D/2], the divisor of each RoPE frequency, for Llama 3.1 scaling
    /// (convert_hf_to_gguf's LlamaModel.generate_extra_tensors), or nil.
    public func ggufRopeFrequencyFactors(_ c: ModelConfig) -> [Float]? {
        switch c.ropeScaling {
        case .frequencyFactors(let f)?:
            return f.map(Float.init)
        case .llama3?:
            let plain = RoPEScaling.inverseFrequencies(headDim: c.headDim, theta: c.ropeTheta, scaling: nil).0
            let scaled = RoPEScaling.inverseFrequencies(headDim: c.headDim, theta: c.ropeTheta, scaling: c.ropeScaling).0
            return zip(plain, scaled).map { Float(Double($0) / Double($1)) }
        default:
            return nil
        }
    }
}

/// A GGUF's metadata read under its architecture's prefix (`ARCH.` + key), each value checked.
struct GGUFMetadata {
    let f: GGUFFile
    let arch: String

    func k(_ key: String) -> String { arch + "." + key }

    /// `ARCH.key` in 1..<2^24.
    func positive(_ key: String) throws -> Int { try positive(key, f.int(k(key))) }

    /// `value` (`ARCH.key`, or the fallback it stands for) in 1..<2^24; nil is missing.
    func positive(_ key: String, _ value: Int?) throws -> Int {
        guard let v = value else { throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k(key))) is missing") }
        guard v > 0, v < 1 << 24 else {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k(key))) must be in 1..<16777216, got \(v)")
        }
        return v
    }

    /// `ARCH.key` as a positive finite number, nil when absent.
    func factor(_ key: String) throws -> Double? {
        guard let v = try f.double(k(key)) else { return nil }
        guard v.isFinite, v > 0 else { throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(k(key))) must be a positive number, got \(v)") }
        return v
    }

    /// A token id of metadata `key` (a full key) inside a vocabulary of `vocab`.
    func tokenId(_ n: Int, _ key: String, vocab: Int) throws -> Int32 {
        guard n >= 0, n < vocab, let v = Int32(exactly: n) else {
            throw MoETuneError.file(path: f.path, message: "metadata \(Printable.quoted(key)) \(n) is outside the vocabulary of \(vocab) tokens")
        }
        return v
    }
}
