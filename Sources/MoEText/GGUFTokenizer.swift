import Foundation
import MoEFormats

/// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built the way
/// transformers' GGUF reader builds it (integrations/gguf/gguf_tokenizer_mapping.py), so
/// that ids equal `AutoTokenizer.from_pretrained(dir, gguf_file=...)`'s:
/// - `tokenizer.ggml.model` "gpt2": a byte-level BPE (tokens outside the byte alphabet
///   respelled through their UTF-8 bytes, the merges as stored), GPT-2's pre-tokenizer unless
///   `tokenizer.ggml.pre` names a Llama-3 or Qwen2 split;
/// - "llama" (SentencePiece, as LlamaTokenizer(vocab, merges) builds it): a BPE over the
///   pieces with byte fallback (<0xNN> tokens) and no unknown token, the merges stored or
///   else recovered from the scores (transformers' generate_merges: every split of a piece
///   into two pieces of the vocabulary, ordered by the piece's score, best first), a
///   Metaspace pre-tokenizer (spaces as ▁, one ▁ prepended to the text), the decoder
///   ▁ → space, byte fallback, fuse, strip one leading space; BOS added unless
///   `tokenizer.ggml.add_bos_token` is false, EOS when `add_eos_token` is true; the unknown,
///   BOS, EOS and padding tokens special.
/// In both, CONTROL tokens (type 3) are special added tokens and USER_DEFINED ones (type 4)
/// plain added tokens.
package enum GGUFTokenizer {
    package static let llama3Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    package static let qwen2Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    package static let splits: [String: String] = [
        "llama3": llama3Split, "llama-v3": llama3Split, "llama-bpe": llama3Split, "falcon3": llama3Split,
        "dbrx": llama3Split, "smaug-bpe": llama3Split, "pixtral": llama3Split,
        "qwen2": qwen2Split, "deepseek-r1-qwen": qwen2Split, "megrez": qwen2Split,
    ]

    package static func load(path: String, extraStopIds: [Int32]) throws -> HFTokenizer {
        let f = try GGUFFile(path: path)
        guard let kind = try f.string("tokenizer.ggml.model") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.model' is missing: the file has no tokenizer")
        }
        guard kind == "gpt2" || kind == "llama" else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.model' is \(Printable.quoted(kind)): supported tokenizers in GGUF files are gpt2 (byte-level BPE) and llama (SentencePiece)")
        }
        guard let tokens = try f.strings("tokenizer.ggml.tokens") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.tokens' is missing")
        }
        let types = try f.ints("tokenizer.ggml.token_type") ?? []
        func token(_ key: String) throws -> String? {
            guard let id = try f.int(key) else { return nil }
            guard id >= 0, id < tokens.count else { throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)) \(id) is outside the \(tokens.count) tokens") }
            return tokens[id]
        }
        let bos = try token("tokenizer.ggml.bos_token_id"), eos = try token("tokenizer.ggml.eos_token_id")
        let json = kind == "gpt2"
            ? try byteLevel(f, path: path, tokens: tokens, types: types, bos: bos)
            : try sentencePiece(f, path: path, tokens: tokens, types: types, bos: bos, eos: eos)
        var config: [String: Any] = [:]
        if let bos { config["bos_token"] = bos }
        if let eos { config["eos_token"] = eos }
        return try HFTokenizer(path: path, json: json, config: (config, path), generationConfigPath: nil, extraStopIds: extraStopIds)
    }

    /// tokenizer.json of a "gpt2" vocabulary.
    package static func byteLevel(_ f: GGUFFile, path: String, tokens: [String], types: [Int], bos: String?) throws -> [String: Any] {
        guard let merges = try f.strings("tokenizer.ggml.merges") else {
            throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.merges' is missing")
        }
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
        return [
            "version": "1.0", "truncation": JSONNull(), "padding": JSONNull(),
            "added_tokens": added, "normalizer": JSONNull(), "pre_tokenizer": pre,
            "post_processor": ["type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials] as [String: Any],
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true] as [String: Any],
            "model": ["type": "BPE", "dropout": JSONNull(), "unk_token": JSONNull(), "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": VocabPairs(pairs: vocab), "merges": merges as [Any]] as [String: Any],
        ]
    }

    /// tokenizer.json of a "llama" (SentencePiece) vocabulary.
    package static func sentencePiece(_ f: GGUFFile, path: String, tokens: [String], types: [Int], bos: String?, eos: String?) throws -> [String: Any] {
        // {token: id} and {token: score} as Python dicts build them: a later duplicate's value
        // wins, at the first one's position. Keys are UTF-8 bytes: Swift's String equality
        // would merge canonically equivalent spellings that Python keeps apart.
        var order: [String] = [], index: [[UInt8]: Int] = [:]
        for (i, t) in tokens.enumerated() {
            if index[Array(t.utf8)] == nil { order.append(t) }
            index[Array(t.utf8)] = i
        }
        let merges: [[String]]
        if let stored = try f.strings("tokenizer.ggml.merges") {
            merges = stored.map { m in m.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false).map(String.init) }
        } else {
            guard let scores = try f.floatArray("tokenizer.ggml.scores"), scores.count == tokens.count else {
                throw MoETuneError.file(path: path, message: "metadata 'tokenizer.ggml.scores' is missing or not one per token (needed for the merges of a SentencePiece vocabulary)")
            }
            var score: [[UInt8]: Float] = [:]
            for (t, v) in zip(tokens, scores) { score[Array(t.utf8)] = v }
            merges = generateMerges(order: order, index: index, score: score)
        }
        var added: [Any] = [], seen = Set<Int>()
        func add(_ id: Int, special: Bool) {
            guard seen.insert(id).inserted else { return }
            added.append(["id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": special] as [String: Any])
        }
        for key in ["unknown_token_id", "bos_token_id", "eos_token_id", "padding_token_id"] {
            if let id = try f.int("tokenizer.ggml." + key), id >= 0, id < tokens.count { add(index[Array(tokens[id].utf8)]!, special: true) }
        }
        for (i, type) in types.prefix(tokens.count).enumerated() where type == 3 { add(index[Array(tokens[i].utf8)]!, special: true) }
        for (i, type) in types.prefix(tokens.count).enumerated() where type == 4 { add(index[Array(tokens[i].utf8)]!, special: false) }
        let seqA: [String: Any] = ["Sequence": ["id": "A", "type_id": 0] as [String: Any]]
        var single: [Any] = [seqA], specials: [String: Any] = [:]
        if try f.bool("tokenizer.ggml.add_bos_token") ?? true, let bos {
            single.insert(["SpecialToken": ["id": bos, "type_id": 0] as [String: Any]], at: 0)
            specials[bos] = ["id": bos, "ids": [index[Array(bos.utf8)]!], "tokens": [bos]] as [String: Any]
        }
        if try f.bool("tokenizer.ggml.add_eos_token") == true, let eos {
            single.append(["SpecialToken": ["id": eos, "type_id": 0] as [String: Any]])
            specials[eos] = ["id": eos, "ids": [index[Array(eos.utf8)]!], "tokens": [eos]] as [String: Any]
        }
        return [
            "version": "1.0", "truncation": JSONNull(), "padding": JSONNull(),
            "added_tokens": added, "normalizer": JSONNull(),
            "pre_tokenizer": ["type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false] as [String: Any],
            "post_processor": ["type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials] as [String: Any],
            "decoder": ["type": "Sequence", "decoders": [
                ["type": "Replace", "pattern": ["String": "\u{2581}"], "content": " "] as [String: Any],
                ["type": "ByteFallback"], ["type": "Fuse"],
                ["type": "Strip", "content": " ", "start": 1, "stop": 0] as [String: Any]]] as [String: Any],
            "model": ["type": "BPE", "dropout": JSONNull(), "unk_token": JSONNull(), "continuing_subword_prefix": JSONNull(),
                      "end_of_word_suffix": JSONNull(), "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": VocabPairs(pairs: order.map { ($0, index[Array($0.utf8)]! as Any) }), "merges": merges as [Any]] as [String: Any],
        ]
    }

    /// transformers' generate_merges(vocab, vocab_scores): for each piece (in vocabulary
    /// order) every split into two pieces of the vocabulary, ordered by the pieces' ids;
    /// then all of them stably sorted by (score, left length, right length), largest first.
    /// Lengths and splits count Unicode scalars, as Python's str does.
    package static func generateMerges(order: [String], index: [[UInt8]: Int], score: [[UInt8]: Float]) -> [[String]] {
        struct Merge { var left: String; var right: String; var ids: (Int, Int); var score: Float; var lengths: (Int, Int); var seq: Int }
        var all: [Merge] = []
        for piece in order {
            let scalars = Array(piece.unicodeScalars)
            guard scalars.count > 1 else { continue }
            var local: [Merge] = []
            for cut in 1..<scalars.count {
                let l = String(String.UnicodeScalarView(scalars[..<cut])), r = String(String.UnicodeScalarView(scalars[cut...]))
                guard let li = index[Array(l.utf8)], let ri = index[Array(r.utf8)] else { continue }
                local.append(Merge(left: l, right: r, ids: (li, ri), score: score[Array(piece.utf8)]!, lengths: (cut, scalars.count - cut), seq: 0))
            }
            local.sort { $0.ids < $1.ids }
            for var m in local { m.seq = all.count; all.append(m) }
        }
        all.sort { a, b in
            if a.score != b.score { return a.score > b.score }
            if a.lengths != b.lengths { return a.lengths > b.lengths }
            return a.seq < b.seq
        }
        return all.map { [$0.left, $0.right] }
    }

    /// bos_token, eos_token, unk_token and pad_token as the chat template sees them.
    package static func specialTokens(_ f: GGUFFile) throws -> [String: String] {
        let tokens = try f.strings("tokenizer.ggml.tokens") ?? []
        var out: [String: String] = [:]
        for (name, key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")] {
            if let id = try f.int("tokenizer.ggml." + key), id >= 0, id < tokens.count { out[name] = tokens[id] }
        }
        return out
    }

    /// The chat template of `tokenizer.chat_template`, or nil.
    package static func chatTemplate(path: String) throws -> ChatTemplateRenderer? {
        let f = try GGUFFile(path: path)
        guard let source = try f.string("tokenizer.chat_template") else { return nil }
        do {
            return try ChatTemplateRenderer(template: source, specialTokens: try specialTokens(f))
        } catch let e as MoETuneError {
            throw MoETuneError.file(path: path, message: "tokenizer.chat_template: \(e.description)")
        }
    }
}
