import Foundation
import MoEFormats
import MoEText

/// The architecture of a Hugging Face checkpoint, read from its config.json. Field names
/// are Hugging Face's; defaults are those of the transformers configuration class of the
/// family where the file omits a field. The family (Model/Families/) owns its own fields.
public struct ModelConfig: Equatable, Sendable {
    public var family: ModelFamily
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    /// RoPE frequency scaling (rope_scaling / rope_parameters); nil: none.
    public var ropeScaling: RoPEScaling?
    public var vocabSize: Int
    public var tieWordEmbeddings: Bool
    public var bosTokenId: Int32?
    public var eosTokenIds: [Int32]
    /// Experts per MoE layer; 0 for dense models.
    public var numExperts: Int
    public var expertsPerToken: Int
    public var routerAuxLossCoef: Float
    /// Sliding-window attention of width slidingWindow (nil: none) in the layers of
    /// `slidingLayers` (nil: every layer, as Mistral/Mixtral; Qwen2/Qwen3 from
    /// max_window_layers or layer_types).
    public var slidingWindow: Int?
    public var slidingLayers: Set<Int>? = nil
    public var maxPositionEmbeddings: Int
    /// q, k and v projections carry a bias (Qwen2); o_proj never does here.
    public var qkvBias = false
    /// GPT-OSS: a bias on o_proj and on the router, per-head attention sinks
    /// (self_attn.sinks [nH]), expert biases and the clamped SwiGLU of its experts.
    public var oBias = false
    public var routerBias = false
    public var attentionSinks = false
    public var clampedSwiGLU: ClampedSwiGLU? = nil
    /// GPT-OSS's quantization_config (quant_method mxfp4): experts stored as MXFP4 blocks
    /// except those modules_to_not_convert names; nil: no quantization_config.
    public var mxfp4: MXFP4Quantization? = nil
    /// RMSNorm on q and k before RoPE (Qwen3: per head over head_dim; OLMoE: over the
    /// whole projection width); nil: none.
    public var qkNorm: QKNorm?
    /// OLMoE's clip_qkv: q, k (after their norm) and v clamped to [-c, c]; nil: none.
    public var clipQKV: Float?
    /// Intermediate size of each routed expert (moe_intermediate_size; Mixtral: intermediate_size).
    public var expertIntermediateSize: Int
    /// Renormalise the top-k router weights to sum to 1 (Mixtral: always; Qwen-MoE, OLMoE: norm_topk_prob).
    public var normTopKProb = true
    /// Intermediate size of the shared expert (Qwen2-MoE); 0: none.
    public var sharedExpertIntermediateSize = 0
    /// Layers that keep a dense MLP in an MoE model (mlp_only_layers), and every
    /// decoderSparseStep-th layer (1-based) is sparse (decoder_sparse_step).
    public var mlpOnlyLayers: [Int] = []
    public var decoderSparseStep = 1
    /// Granite's multipliers: the embeddings times embeddingMultiplier, q k^T times
    /// attentionMultiplier (nil: 1 / sqrt(head_dim)), each sublayer's output (attention's
    /// o_proj, the MoE block) times residualMultiplier before its residual add, and the
    /// logits divided by logitsScaling. 1 (nil) everywhere else.
    /// DeepSeek-V2's multi-head latent attention (nil: q/k/v projections); then headDim is
    /// the query/key head width nope + rope, every head has its own key and value
    /// (numKVHeads == numHeads) and values are mla.valueDim wide (padded to headDim in the
    /// attention kernels).
    public var mla: MLAShape? = nil
    /// DeepSeek-V2's router: the k selected probabilities times routedScalingFactor, and with
    /// group-limited greedy top-k only experts of the topk_group best groups can be chosen.
    public var routedScalingFactor: Float = 1
    public var expertGroups: ExpertGroups? = nil
    public var embeddingMultiplier: Float = 1
    public var attentionMultiplier: Float? = nil
    public var residualMultiplier: Float = 1
    public var logitsScaling: Float = 1

    /// Whether layer l has experts (else a dense MLP of intermediate_size).
    public func isMoELayer(_ l: Int) -> Bool {
        isMoE && !mlpOnlyLayers.contains(l) && (l + 1) % max(decoderSparseStep, 1) == 0
    }
    /// Whether any layer has a dense MLP.
    public var hasDenseLayers: Bool { (0..<numLayers).contains { !isMoELayer($0) } }
    /// Floats of the largest SwiGLU scratch [rows, I] over N tokens: the dense MLP, the
    /// N*k routed assignments or the shared expert.
    public func feedForwardScratch(tokens n: Int) -> Int {
        max(hasDenseLayers ? n * intermediateSize : 0, isMoE ? n * expertsPerToken * expertIntermediateSize : 0,
            n * sharedExpertIntermediateSize, 1)
    }

    public var isMoE: Bool { numExperts > 0 }
    public var qDim: Int { numHeads * headDim }
    public var kvDim: Int { numKVHeads * headDim }
    /// Width of the attention output, o_proj's input: nH * D, or nH * v_head_dim with MLA.
    public var attentionOutDim: Int { mla.map { numHeads * $0.valueDim } ?? qDim }

    public init(
        family: ModelFamily, hiddenSize: Int, intermediateSize: Int, numLayers: Int, numHeads: Int,
        numKVHeads: Int, headDim: Int, rmsNormEps: Float, ropeTheta: Double, vocabSize: Int,
        tieWordEmbeddings: Bool, bosTokenId: Int32?, eosTokenIds: [Int32], numExperts: Int,
        expertsPerToken: Int, routerAuxLossCoef: Float, slidingWindow: Int?, maxPositionEmbeddings: Int
    ) {
        self.family = family; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numLayers = numLayers; self.numHeads = numHeads; self.numKVHeads = numKVHeads
        self.headDim = headDim; self.rmsNormEps = rmsNormEps; self.ropeTheta = ropeTheta
        self.vocabSize = vocabSize; self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenId = bosTokenId; self.eosTokenIds = eosTokenIds; self.numExperts = numExperts
        self.expertsPerToken = expertsPerToken; self.routerAuxLossCoef = routerAuxLossCoef
        self.slidingWindow = slidingWindow; self.maxPositionEmbeddings = maxPositionEmbeddings
        self.expertIntermediateSize = intermediateSize
    }

    /// Reads and validates `dir/config.json`.
    public static func load(directory: String) throws -> ModelConfig {
        let path = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoETuneError.file(path: path, message: "not found (is \(directory) a Hugging Face model folder?)")
        }
        return try parse(data, path: path)
    }

    /// The config.json fields `parse` reads for every family (a family reads its own after).
    package static let sharedFields: Set<String> = [
        "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
        "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "eos_token_id",
        "intermediate_size", "num_hidden_layers", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
        "bos_token_id", "router_aux_loss_coef",
    ]

    public static func parse(_ data: Data, path: String) throws -> ModelConfig {
        guard let obj = try? JSONSerialization.jsonObject(with: data), let json = obj as? [String: Any] else {
            throw MoETuneError.file(path: path, message: "not a JSON object")
        }
        let r = FieldReader(json: json, path: path)
        let typeName = try r.string("model_type")
        guard let family = ModelFamily.forModelType(typeName) else {
            throw MoETuneError.config(path: path, key: "model_type",
                message: "unsupported model_type \(Printable.quoted(typeName)) (supported: \(ModelFamily.supportedModelTypes.joined(separator: ", ")))")
        }
        let d = family.defaults
        let hidden = try r.int("hidden_size")
        let heads = try r.int("num_attention_heads")
        guard hidden > 0, heads > 0 else {
            throw MoETuneError.config(path: path, key: "hidden_size", message: "hidden_size and num_attention_heads must be positive")
        }
        let kvHeads = try r.optionalInt("num_key_value_heads") ?? heads
        let headDim = try r.optionalInt("head_dim") ?? d.headDim ?? hidden / heads
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw MoETuneError.config(path: path, key: "num_key_value_heads",
                message: "\(kvHeads) does not divide num_attention_heads \(heads)")
        }
        guard headDim > 0, headDim % 2 == 0 else {
            throw MoETuneError.config(path: path, key: "head_dim", message: "must be a positive even number, got \(headDim)")
        }
        if let act = try r.optionalString("hidden_act"), act != "silu" {
            throw MoETuneError.config(path: path, key: "hidden_act", message: "only silu is supported, got \(Printable.quoted(act))")
        }
        let maxPositions = try r.optionalInt("max_position_embeddings") ?? d.maxPositionEmbeddings
        let (theta, scaling) = try RoPEScaling.read(json, reader: r, path: path, maxPositions: maxPositions)
        // Token ids are checked before they become Int32s (2^32 trapped, a list element was
        // truncated silently), and against vocab_size below (a negative eos dropped EOS from
        // every example).
        let eos: [Int32]
        if let list = json["eos_token_id"] as? [Any] {
            eos = try list.enumerated().map { i, v in
                guard let n = try FieldReader(json: ["eos_token_id[\(i)]": v], path: path).optionalInt("eos_token_id[\(i)]") else {
                    throw MoETuneError.config(path: path, key: "eos_token_id", message: "expected integers")
                }
                return try tokenId(n, key: "eos_token_id[\(i)]", path: path)
            }
        } else {
            eos = try r.optionalInt("eos_token_id").map { [try tokenId($0, key: "eos_token_id", path: path)] } ?? [Int32(d.eosTokenId)]
        }
        let bos = try r.optionalInt("bos_token_id").map { try tokenId($0, key: "bos_token_id", path: path) } ?? d.bosTokenId.map(Int32.init)
        var config = ModelConfig(
            family: family,
            hiddenSize: hidden,
            intermediateSize: try r.int("intermediate_size"),
            numLayers: try r.int("num_hidden_layers"),
            numHeads: heads,
            numKVHeads: kvHeads,
            headDim: headDim,
            rmsNormEps: Float(try r.optionalDouble("rms_norm_eps") ?? d.rmsNormEps),
            ropeTheta: theta ?? d.ropeTheta,
            vocabSize: try r.int("vocab_size"),
            tieWordEmbeddings: try r.optionalBool("tie_word_embeddings") ?? d.tieWordEmbeddings,
            bosTokenId: bos,
            eosTokenIds: eos,
            numExperts: 0,
            expertsPerToken: 0,
            routerAuxLossCoef: Float(try r.optionalDouble("router_aux_loss_coef") ?? d.routerAuxLossCoef),
            slidingWindow: nil,
            maxPositionEmbeddings: maxPositions)
        config.ropeScaling = scaling
        config.expertIntermediateSize = config.intermediateSize
        try family.readConfig(r, &config)
        for (key, value) in [("intermediate_size", config.intermediateSize), ("num_hidden_layers", config.numLayers),
                             ("vocab_size", config.vocabSize)] where value <= 0 {
            throw MoETuneError.config(path: path, key: key, message: "must be positive, got \(value)")
        }
        if let b = config.bosTokenId, b >= config.vocabSize, json["bos_token_id"] != nil {
            throw MoETuneError.config(path: path, key: "bos_token_id", message: "id \(b) is outside the vocabulary (vocab_size \(config.vocabSize))")
        }
        for e in config.eosTokenIds where e >= config.vocabSize && json["eos_token_id"] != nil {
            throw MoETuneError.config(path: path, key: "eos_token_id", message: "id \(e) is outside the vocabulary (vocab_size \(config.vocabSize))")
        }
        return config
    }

    /// A token id of config.json: 0..<2^24 (the bound of tokenizer files' ids), else refused.
    package static func tokenId(_ n: Int, key: String, path: String) throws -> Int32 {
        guard n >= 0, n < 1 << 24 else {
            throw MoETuneError.config(path: path, key: key, message: "id \(n) is outside the vocabulary (0..<16777216)")
        }
        return Int32(n)
    }

    /// The sliding window of layer l, or nil where it attends to every earlier position.
    public func window(layer l: Int) -> Int? {
        guard let w = slidingWindow, slidingLayers?.contains(l) ?? true else { return nil }
        return w
    }

    /// The attention shape over a batch of a layer whose sliding window is `window` (a
    /// layer description's, DecoderLayer.window): the window only where it is shorter than
    /// the sequence.
    package func attentionShape(batch b: Int, seq t: Int, window: Int?) -> AttentionShape {
        AttentionShape(batch: b, seq: t, heads: numHeads, kvHeads: numKVHeads, headDim: headDim,
                       window: window.flatMap { $0 < t ? $0 : nil }, scale: attentionMultiplier)
    }
}

/// The shape of DeepSeek-V2's multi-head latent attention: q_proj [nH*(nope+rope), H]
/// (or q_a_proj, q_a_layernorm, q_b_proj), kv_a_proj_with_mqa [kvLoraRank + rope, H], kv_a_layernorm [kvLoraRank],
/// kv_b_proj [nH*(nope+valueDim), kvLoraRank], o_proj [H, nH*valueDim].
public struct MLAShape: Equatable, Sendable {
    /// q_lora_rank: nil, q = q_proj(x); else q = q_b_proj(q_a_layernorm(q_a_proj(x))) with
    /// q_a_proj [qLoraRank, H] (frozen) and q_b_proj [nH*(nope+rope), qLoraRank].
    public var qLoraRank: Int? = nil
    public var kvLoraRank: Int
    public var nopeDim: Int
    public var ropeDim: Int
    public var valueDim: Int
    public var qkDim: Int { nopeDim + ropeDim }
}

/// Group-limited greedy top-k: E experts in `groups` groups of E / groups; a token's
/// experts come from the `topGroups` groups with the highest best probability.
public struct ExpertGroups: Equatable, Sendable {
    public var groups: Int
    public var topGroups: Int
}

/// Where q/k RMSNorm normalises: over each head's head_dim values (Qwen3, weight [D]) or over
/// the whole projection (OLMoE, weights [nH*D] and [nKV*D]).
public enum QKNorm: Sendable, Equatable { case perHead, fullWidth }

extension ModelConfig {
    /// Rows and columns of q's (or k's) RMSNorm over N tokens.
    package func qkNormShape(tokens n: Int, heads: Int) -> (rows: Int, cols: Int) {
        qkNorm == .fullWidth ? (n, heads * headDim) : (n * heads, headDim)
    }
}

extension FieldReader {
    /// Refuses `key` when it is present with a value other than `allowed` (or, with
    /// allowed nil, present at all): a field of a supported family that moe-tune does not implement.
    package func refuse(_ key: String, unless allowed: Bool? = false, message: String) throws {
        if let v = try optionalBool(key), v != allowed {
            throw MoETuneError.config(path: path, key: prefix + key, message: message)
        }
    }

    /// Qwen's sliding window: off unless use_sliding_window; then sliding_window (default
    /// 4096) in the layers layer_types names "sliding_attention", or, where the file has no
    /// layer_types, in the layers `defaultLayers` picks from max_window_layers (default 28)
    /// — transformers 5's rule for the family.
    package func readQwenSlidingWindow(_ c: inout ModelConfig, defaultLayers: (_ layer: Int, _ maxWindowLayers: Int) -> Bool) throws {
        let types: [String]?
        if let v = json["layer_types"], !(v is NSNull) {
            guard let list = v as? [String], list.count == c.numLayers,
                  list.allSatisfy({ $0 == "full_attention" || $0 == "sliding_attention" }) else {
                throw MoETuneError.config(path: path, key: prefix + "layer_types",
                    message: "expected \(c.numLayers) entries, each \"full_attention\" or \"sliding_attention\"")
            }
            types = list
        } else {
            types = nil
        }
        guard try optionalBool("use_sliding_window") == true else {
            if types?.contains("sliding_attention") == true {
                throw MoETuneError.config(path: path, key: prefix + "layer_types",
                    message: "names sliding_attention layers but use_sliding_window is false")
            }
            c.slidingWindow = nil
            return
        }
        let w = try optionalInt("sliding_window") ?? 4096
        guard w > 0 else { throw MoETuneError.config(path: path, key: prefix + "sliding_window", message: "must be positive, got \(w)") }
        let maxWindowLayers = try optionalInt("max_window_layers") ?? 28
        c.slidingWindow = w
        c.slidingLayers = Set((0..<max(c.numLayers, 0)).filter { l in
            types.map { $0[l] == "sliding_attention" } ?? defaultLayers(l, maxWindowLayers)
        })
    }

    /// moe_intermediate_size, norm_topk_prob, decoder_sparse_step and mlp_only_layers (Qwen-MoE).
    package func readSparseLayout(_ c: inout ModelConfig, defaultExpertIntermediate: Int, defaultNormTopK: Bool) throws {
        c.expertIntermediateSize = try optionalInt("moe_intermediate_size") ?? defaultExpertIntermediate
        c.normTopKProb = try optionalBool("norm_topk_prob") ?? defaultNormTopK
        c.decoderSparseStep = try optionalInt("decoder_sparse_step") ?? 1
        guard c.expertIntermediateSize > 0 else {
            throw MoETuneError.config(path: path, key: prefix + "moe_intermediate_size", message: "must be positive")
        }
        guard c.decoderSparseStep >= 1 else {
            throw MoETuneError.config(path: path, key: prefix + "decoder_sparse_step", message: "must be at least 1")
        }
        if let v = json["mlp_only_layers"], !(v is NSNull) {
            guard let list = v as? [NSNumber] else {
                throw MoETuneError.config(path: path, key: prefix + "mlp_only_layers", message: "expected a list of layer indices")
            }
            c.mlpOnlyLayers = list.map(\.intValue)
        }
    }

    /// Reads the MoE fields shared by the MoE families into `c`.
    package func readExperts(_ c: inout ModelConfig, countKey: String, defaultCount: Int, defaultTopK: Int) throws {
        c.numExperts = try optionalInt(countKey) ?? defaultCount
        c.expertsPerToken = try optionalInt("num_experts_per_tok") ?? defaultTopK
        guard c.numExperts > 0 else {
            throw MoETuneError.config(path: path, key: countKey, message: "must be positive")
        }
        guard (1...c.numExperts).contains(c.expertsPerToken) else {
            throw MoETuneError.config(path: path, key: "num_experts_per_tok",
                message: "must be between 1 and \(countKey) (\(c.numExperts)), got \(c.expertsPerToken)")
        }
    }
}

/// Typed access to config.json fields with errors that name the key.
package struct FieldReader {
    package let json: [String: Any]
    package let path: String
    package var prefix = ""

    private func value(_ key: String) -> Any? {
        guard let v = json[key], !(v is NSNull) else { return nil }
        return v
    }

    private func number(_ key: String) throws -> NSNumber? {
        guard let v = value(key) else { return nil }
        guard let n = v as? NSNumber, !(CFGetTypeIDIsBool(n)) else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "expected a number, got \(v)")
        }
        return n
    }

    package func int(_ key: String) throws -> Int {
        guard let v = try optionalInt(key) else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "required field is missing")
        }
        return v
    }

    package func optionalInt(_ key: String) throws -> Int? {
        guard let n = try number(key) else { return nil }
        let d = n.doubleValue
        guard d == d.rounded(), abs(d) < 1e15 else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "expected an integer, got \(n)")
        }
        return Int(d)
    }

    package func optionalDouble(_ key: String) throws -> Double? { try number(key)?.doubleValue }

    package func string(_ key: String) throws -> String {
        guard let v = try optionalString(key) else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "required field is missing")
        }
        return v
    }

    package func optionalString(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v as? String else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "expected a string, got \(v)")
        }
        return s
    }

    package func optionalBool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let n = v as? NSNumber, CFGetTypeIDIsBool(n) else {
            throw MoETuneError.config(path: path, key: prefix + key, message: "expected true or false, got \(v)")
        }
        return n.boolValue
    }
}
