import Foundation

/// One tensor of a model as llama.cpp stores it in GGUF: its GGUF name and, for llama's
/// q and k projections, the head count of llama.cpp's row permutation (convert_hf_to_gguf's
/// `permute`: within each head the rows of the two rotate_half halves are interleaved,
/// HF row h*D + s*D/2 + j is GGUF row h*D + 2j + s), which reading undoes and writing redoes.
public struct GGUFTensorName: Sendable, Equatable {
    public let hf: String
    public let gguf: String
    public let permuteHeads: Int?
}

/// llama.cpp's names for a family's tensors and hyper-parameters (gguf-py's constants.py
/// and tensor_mapping.py; convert_hf_to_gguf.py's LlamaModel), for families with a
/// `ggufArchitecture`. Dense llama layout only: a GGUF with experts is refused.
extension ModelFamily {
    public static func forGGUFArchitecture(_ arch: String) -> ModelFamily? { all.first { $0.ggufArchitecture == arch } }
    public static var supportedGGUFArchitectures: [String] { all.compactMap(\.ggufArchitecture) }

    /// Every tensor of a model of config `c`, Hugging Face name beside the GGUF one;
    /// `lm_head` only when `c` does not tie it to the embedding.
    public func ggufTensorNames(_ c: ModelConfig) -> [GGUFTensorName] {
        var out = [GGUFTensorName(hf: embedTokens, gguf: "token_embd.weight", permuteHeads: nil),
                   GGUFTensorName(hf: finalNorm, gguf: "output_norm.weight", permuteHeads: nil)]
        if !c.tieWordEmbeddings { out.append(GGUFTensorName(hf: lmHead, gguf: "output.weight", permuteHeads: nil)) }
        for l in 0..<c.numLayers {
            let b = "blk.\(l)."
            let pairs: [(String, String, Int?)] = [
                (inputNorm(l), "attn_norm.weight", nil),
                (postAttentionNorm(l), "ffn_norm.weight", nil),
                (weight(.q, layer: l), "attn_q.weight", c.numHeads),
                (weight(.k, layer: l), "attn_k.weight", c.numKVHeads),
                (weight(.v, layer: l), "attn_v.weight", nil),
                (weight(.o, layer: l), "attn_output.weight", nil),
                (weight(.mlp(.gate), layer: l), "ffn_gate.weight", nil),
                (weight(.mlp(.up), layer: l), "ffn_up.weight", nil),
                (weight(.mlp(.down), layer: l), "ffn_down.weight", nil),
            ]
            out += pairs.map { GGUFTensorName(hf: $0.0, gguf: b + $0.1, permuteHeads: $0.2) }
        }
        return out
    }

    /// The model configuration a GGUF's metadata gives (`ARCH.block_count`,
    /// `ARCH.embedding_length`, …, `tokenizer.ggml.*` for the token ids); every size is
    /// checked, and what moe-tune does not implement is refused, naming the key.
    public static func config(gguf f: GGUFFile) throws -> ModelConfig {
        guard let arch = try f.string("general.architecture") else {
            throw MoETuneError.file(path: f.path, message: "metadata 'general.architecture' is missing")
        }
        guard let family = forGGUFArchitecture(arch) else {
            throw MoETuneError.file(path: f.path, message: "architecture '\(arch)' is not supported for GGUF (supported: \(supportedGGUFArchitectures.joined(separator: ", ")))")
        }
        let k = { (s: String) in arch + "." + s }
        func positive(_ key: String, _ v: Int?) throws -> Int {
            guard let v else { throw MoETuneError.file(path: f.path, message: "metadata '\(key)' is missing") }
            guard v > 0, v < 1 << 24 else { throw MoETuneError.file(path: f.path, message: "metadata '\(key)' must be in 1..<16777216, got \(v)") }
            return v
        }
        if let e = try f.int(k("expert_count")), e > 0 {
            throw MoETuneError.file(path: f.path, message: "metadata '\(k("expert_count"))' is \(e): GGUF models with experts are not supported yet (dense \(arch) only)")
        }
        if let t = try f.string(k("rope.scaling.type")), t != "none" {
            throw MoETuneError.file(path: f.path, message: "metadata '\(k("rope.scaling.type"))' is '\(t)': RoPE scaling is not supported for GGUF models yet")
        }
        if f.tensor("rope_freqs.weight") != nil {
            throw MoETuneError.file(path: f.path, message: "tensor 'rope_freqs.weight' (Llama 3.1 RoPE scaling) is not supported for GGUF models yet")
        }
        let hidden = try positive(k("embedding_length"), try f.int(k("embedding_length")))
        let heads = try positive(k("attention.head_count"), try f.int(k("attention.head_count")))
        let kvHeads = try positive(k("attention.head_count_kv"), try f.int(k("attention.head_count_kv")) ?? heads)
        guard heads % kvHeads == 0 else {
            throw MoETuneError.file(path: f.path, message: "metadata '\(k("attention.head_count_kv"))' \(kvHeads) does not divide the head count \(heads)")
        }
        let headDim = try positive(k("attention.key_length"), try f.int(k("attention.key_length")) ?? hidden / heads)
        if let v = try f.int(k("attention.value_length")), v != headDim {
            throw MoETuneError.file(path: f.path, message: "metadata '\(k("attention.value_length"))' \(v) differs from the key length \(headDim) (not supported)")
        }
        if let r = try f.int(k("rope.dimension_count")), r != headDim {
            throw MoETuneError.file(path: f.path, message: "metadata '\(k("rope.dimension_count"))' \(r) is not the head size \(headDim) (partial rotary embeddings are not supported)")
        }
        guard headDim % 2 == 0 else { throw MoETuneError.file(path: f.path, message: "head size \(headDim) must be even") }
        let tokens = try f.strings("tokenizer.ggml.tokens")
        let vocab = try positive(k("vocab_size"), try f.int(k("vocab_size")) ?? tokens?.count ?? f.tensor("token_embd.weight")?.shape.first)
        let eps = try f.double(k("attention.layer_norm_rms_epsilon")) ?? family.defaults.rmsNormEps
        let eos = try f.int("tokenizer.ggml.eos_token_id")
        var c = ModelConfig(
            family: family, hiddenSize: hidden,
            intermediateSize: try positive(k("feed_forward_length"), try f.int(k("feed_forward_length"))),
            numLayers: try positive(k("block_count"), try f.int(k("block_count"))),
            numHeads: heads, numKVHeads: kvHeads, headDim: headDim,
            rmsNormEps: Float(eps), ropeTheta: try f.double(k("rope.freq_base")) ?? family.defaults.ropeTheta,
            vocabSize: vocab, tieWordEmbeddings: f.tensor("output.weight") == nil,
            bosTokenId: try f.int("tokenizer.ggml.bos_token_id").map(Int32.init),
            eosTokenIds: eos.map { [Int32($0)] } ?? [],
            numExperts: 0, expertsPerToken: 0, routerAuxLossCoef: Float(family.defaults.routerAuxLossCoef),
            slidingWindow: nil,
            maxPositionEmbeddings: try positive(k("context_length"), try f.int(k("context_length")) ?? family.defaults.maxPositionEmbeddings))
        c.expertIntermediateSize = c.intermediateSize
        return c
    }

    /// The GGUF metadata of config `c` under llama.cpp's keys (the reverse of `config(gguf:)`).
    public func ggufMetadata(_ c: ModelConfig) -> [(String, GGUFValue)] {
        let a = ggufArchitecture ?? name
        return [
            ("general.architecture", .string(a)),
            (a + ".block_count", .uint32(UInt32(c.numLayers))),
            (a + ".context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
            (a + ".embedding_length", .uint32(UInt32(c.hiddenSize))),
            (a + ".feed_forward_length", .uint32(UInt32(c.intermediateSize))),
            (a + ".attention.head_count", .uint32(UInt32(c.numHeads))),
            (a + ".attention.head_count_kv", .uint32(UInt32(c.numKVHeads))),
            (a + ".attention.key_length", .uint32(UInt32(c.headDim))),
            (a + ".attention.value_length", .uint32(UInt32(c.headDim))),
            (a + ".rope.dimension_count", .uint32(UInt32(c.headDim))),
            (a + ".rope.freq_base", .float32(Float(c.ropeTheta))),
            (a + ".attention.layer_norm_rms_epsilon", .float32(c.rmsNormEps)),
            (a + ".vocab_size", .uint32(UInt32(c.vocabSize))),
        ]
    }
}
