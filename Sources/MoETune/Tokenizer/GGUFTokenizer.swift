import Foundation

/// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built the way
/// transformers' GGUF reader builds it (integrations/gguf/gguf_tokenizer_mapping.py), so
/// that ids equal `AutoTokenizer.from_pretrained(dir, gguf_file=...)`'s: for
/// `tokenizer.ggml.model` "gpt2", a byte-level BPE (tokens outside the byte alphabet
/// respelled through their UTF-8 bytes, the merges as stored), CONTROL tokens (type 3) as
/// special added tokens, USER_DEFINED ones (type 4) as plain added tokens, GPT-2's
/// pre-tokenizer unless `tokenizer.ggml.pre` names a Llama-3 or Qwen2 split, BOS added when
/// `tokenizer.ggml.add_bos_token` says so. SentencePiece-type ("llama") vocabularies are refused.
enum GGUFTokenizer {
    static let llama3Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let splits: [String: String] = [
        "llama3": llama3Split, "llama-v3": llama3Split, "llama-bpe": llama3Split, "falcon3": llama3Split,
        "dbrx": llama3Split, "smaug-bpe": llama3Split, "pixtral": llama3Split,
        "qwen2": qwen2Split, "deepseek-r1-qwen": qwen2Split, "megrez": qwen2Split,
    ]

    static func load(path: String, extraStopIds: [Int32]) throws -> HFTokenizer {
        let f = try GGUFFile(path: path)
        guard let kind = try f.string("tokenizer.ggml.model") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.model' is missing: the file has no tokenizer")
        }
        guard kind == "gpt2" else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.model' is '\(kind)': only gpt2-style BPE tokenizers are supported in GGUF files")
        }
        guard let tokens = try f.strings("tokenizer.ggml.tokens") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.tokens' is missing")
        }
        guard let merges = try f.strings("tokenizer.ggml.merges") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.merges' is missing")
        }
        let types = try f.ints("tokenizer.ggml.token_type") ?? []
        let alphabet = Set(ByteLevelMap.byteToScalar)
        func spelled(_ t: String) -> Bool { t.unicodeScalars.allSatisfy { alphabet.contains($0.value) } }
        // The vocabulary as a Python dict comprehension builds it: a later duplicate wins.
        var vocab: [(String, Any)] = [], position: [String: Int] = [:]
        for (i, t) in tokens.enumerated() {
            let s = spelled(t) ? t : String(String.UnicodeScalarView(t.utf8.map { Unicode.Scalar(ByteLevelMap.byteToScalar[Int($0)])! }))
            if let p = position[s] { vocab[p].1 = i } else { position[s] = vocab.count; vocab.append((s, i)) }
        }
        var added: [Any] = []
        for (i, (t, type)) in zip(tokens, types).enumerated() {
            let special = type == 3 && spelled(t)
            guard special || (type == 4 && position[t] != nil) else { continue }
            added.append(["id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": special] as [String: Any])
        }
        func token(_ key: String) throws -> String? {
            guard let id = try f.int(key) else { return nil }
            guard id >= 0, id < tokens.count else { throw MoETuneError.file(path: path, message: "metadata '\(key)' \(id) is outside the \(tokens.count) tokens") }
            return tokens[id]
        }
        let bos = try token("tokenizer.ggml.bos_token_id"), eos = try token("tokenizer.ggml.eos_token_id")
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        var pre: [String: Any] = byteLevel
        if let p = try f.string("tokenizer.ggml.pre"), let split = splits[p] {
            var bl = byteLevel; bl["use_regex"] = false
            pre = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": split], "behavior": "Isolated", "invert": false] as [String: Any], bl]]
        }
        let seqA: [String: Any] = ["Sequence": ["id": "A", "type_id": 0] as [String: Any]]
        var single: [Any] = [seqA], specials: [String: Any] = [:]
        if try f.bool("tokenizer.ggml.add_bos_token") == true, let bos, let id = try f.int("tokenizer.ggml.bos_token_id") {
            single = [["SpecialToken": ["id": bos, "type_id": 0] as [String: Any]], seqA]
            specials[bos] = ["id": bos, "ids": [id], "tokens": [bos]] as [String: Any]
        }
        let json: [String: Any] = [
            "version": "1.0", "truncation": JSONNull(), "padding": JSONNull(),
            "added_tokens": added, "normalizer": JSONNull(), "pre_tokenizer": pre,
            "post_processor": ["type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials] as [String: Any],
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true] as [String: Any],
            "model": ["type": "BPE", "dropout": JSONNull(), "unk_token": JSONNull(), "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": VocabPairs(pairs: vocab), "merges": merges as [Any]] as [String: Any],
        ]
        var config: [String: Any] = [:]
        if let bos { config["bos_token"] = bos }
        if let eos { config["eos_token"] = eos }
        return try HFTokenizer(path: path, json: json, config: (config, path), generationConfigPath: nil, extraStopIds: extraStopIds)
    }

    /// bos_token, eos_token, unk_token and pad_token as the chat template sees them.
    static func specialTokens(_ f: GGUFFile) throws -> [String: String] {
        let tokens = try f.strings("tokenizer.ggml.tokens") ?? []
        var out: [String: String] = [:]
        for (name, key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")] {
            if let id = try f.int("tokenizer.ggml." + key), id >= 0, id < tokens.count { out[name] = tokens[id] }
        }
        return out
    }

    /// The chat template of `tokenizer.chat_template`, or nil.
    static func chatTemplate(path: String) throws -> ChatTemplateRenderer? {
        let f = try GGUFFile(path: path)
        guard let source = try f.string("tokenizer.chat_template") else { return nil }
        do {
            return try ChatTemplateRenderer(template: source, specialTokens: try specialTokens(f))
        } catch let e as MoETuneError {
            throw MoETuneError.file(path: path, message: "tokenizer.chat_template: \(e.description)")
        }
    }
}
