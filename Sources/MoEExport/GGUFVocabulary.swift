import Foundation
import MoEFormats
import MoEText
import MoECore

/// The `tokenizer.*` GGUF metadata of a Hugging Face model folder's gpt2-style (byte-level
/// BPE) tokenizer, key for key and value for value what llama.cpp's convert_hf_to_gguf.py
/// writes for it (conversion/base.py get_vocab_base and _set_vocab_gpt2, gguf-py's
/// SpecialVocab, conversion/llama.py set_vocab):
/// - `tokenizer.ggml.model` "gpt2"; `tokenizer.ggml.pre`: the name llama.cpp's table gives the
///   SHA-256 of the ids of its check text (GGUFPreTokenizers; an unknown hash is refused, as
///   the converter refuses it: llama.cpp could not load the file);
/// - `tokens` / `token_type` for ids 0..<vocab_size (config.json): NORMAL 1, added tokens
///   CONTROL 3 when special or looking special (`<|...|>`, ...), else USER_DEFINED 4, ids the
///   tokenizer lacks "[PADi]" UNUSED 5; `merges` as "a b" (spaces inside a part as U+0120);
/// - special token ids (bos, eos, unk, sep, pad, mask; eot/eom when the post-processor moves
///   EOS) from tokenizer_config.json's *_token looked up among the added tokens, else
///   config.json's *_token_id; add_bos/add_eos/add_sep from the post-processor and
///   tokenizer_config.json's add_*_token; `add_space_prefix` from add_prefix_space;
/// - `tokenizer.chat_template` from tokenizer_config.json, chat_template.jinja or
///   chat_template.json.
package enum GGUFVocabulary {
    package static let normal: Int32 = 1, control: Int32 = 3, userDefined: Int32 = 4, unused: Int32 = 5

    /// `vocabSize`: config.json's vocab_size; `architecture`: the GGUF architecture
    /// (llama's converter writes add_bos_token false for a 49,152-token vocabulary).
    package static func metadata(folder: String, vocabSize: Int, architecture: String) throws -> [(String, GGUFValue)] {
        let f = try TokenizerFolder(folder)
        let (tokens, types) = try tokenTable(f, vocabSize: vocabSize)
        let pre = try preTokenizerName(f)
        let merges = try mergeList(f)
        var out: [(String, GGUFValue)] = []
        if let p = f.config?["add_prefix_space"] as? Bool { set(&out, "tokenizer.ggml.add_space_prefix", .bool(p)) }
        set(&out, "tokenizer.ggml.model", .string("gpt2"))
        set(&out, "tokenizer.ggml.pre", .string(pre))
        set(&out, "tokenizer.ggml.tokens", .array(.string, tokens))
        set(&out, "tokenizer.ggml.token_type", .array(.int32, types))
        if !merges.isEmpty { set(&out, "tokenizer.ggml.merges", .array(.string, merges)) }

        // gguf-py's SpecialVocab: the post-processor, tokenizer_config.json, config.json.
        var special = try SpecialVocab(config: f.config, reader: f.configReader)
        if let pp = f.json["post_processor"] as? [String: Any] { special.postProcessor(pp) }
        let template = try special.tc.flatMap { try chatTemplate($0, folder: f) }
        try special.readIds(added: f.added, modelConfig: (folder as NSString).appendingPathComponent("config.json"))
        for (k, v) in try special.keys(folder: folder) { set(&out, k, v) }
        if let template { set(&out, "tokenizer.chat_template", .string(template)) }
        for (k, v) in normalizerKeys(f.json) { set(&out, k, v) }
        if architecture == "llama", vocabSize == 49152 { set(&out, "tokenizer.ggml.add_bos_token", .bool(false)) }
        return out
    }

    /// Sets key k in out: in its place when already there, else at the end.
    package static func set(_ out: inout [(String, GGUFValue)], _ k: String, _ v: GGUFValue) {
        if let i = out.firstIndex(where: { $0.0 == k }) { out[i].1 = v } else { out.append((k, v)) }
    }

    /// A model folder's tokenizer.json (gpt2-style byte-level BPE only), its tokenizer and
    /// its tokenizer_config.json, read.
    package struct TokenizerFolder {
        package let dir: NSString
        /// tokenizer.json: its path, reader, content, "model" object and added_tokens objects.
        package let path: String, reader: JSONReader, json: [String: Any], model: [String: Any], added: [[String: Any]]
        package let tokenizer: HFTokenizer
        /// tokenizer_config.json (nil when absent) and its reader.
        package let config: [String: Any]?, configReader: JSONReader

        package init(_ folder: String) throws {
            dir = folder as NSString
            path = dir.appendingPathComponent("tokenizer.json")
            guard FileManager.default.fileExists(atPath: path) else {
                throw MoETuneError.file(path: folder, message: "GGUF output from a model folder needs its tokenizer.json (a gpt2-style byte-level BPE tokenizer)")
            }
            reader = JSONReader(path: path)
            json = try JSONReader.parse(path: path)
            tokenizer = try HFTokenizer(directory: folder)
            guard let model = try reader.optionalObject(json["model"], "model"), (model["type"] as? String) == "BPE",
                  tokenizer.model.byteLevel, !tokenizer.model.byteFallback else {
                throw reader.fail("model", "only gpt2-style byte-level BPE tokenizers can be written to GGUF from a folder (SentencePiece-style vocabularies are not supported yet)")
            }
            self.model = model
            added = (json["added_tokens"] as? [Any] ?? []).compactMap { $0 as? [String: Any] }
            let configPath = dir.appendingPathComponent("tokenizer_config.json")
            config = FileManager.default.fileExists(atPath: configPath) ? try JSONReader.parse(path: configPath) : nil
            configReader = JSONReader(path: configPath)
        }
    }

    /// `tokens` and `token_type` for ids 0..<vocabSize: NORMAL, added tokens CONTROL or
    /// USER_DEFINED, "[PADi]" UNUSED for ids the tokenizer lacks.
    package static func tokenTable(_ f: TokenizerFolder, vocabSize: Int) throws -> (tokens: [GGUFValue], types: [GGUFValue]) {
        let r = f.reader
        var byId: [Int: String] = [:]
        guard let vocab = (f.model["vocab"] as? VocabPairs)?.pairs else { throw r.fail("model.vocab", "must be an object") }
        for (t, v) in vocab { byId[try r.int(v, "model.vocab.\(t)")] = t }
        var added: [String: [String: Any]] = [:]
        for a in f.added {
            guard let content = a["content"] as? String else { continue }
            byId[try r.int(a["id"], "added_tokens.id")] = content
            added[content] = a
        }
        if let top = byId.keys.max(), top >= vocabSize {
            throw MoETuneError.file(path: f.path, message: "token id \(top) is not below config.json's vocab_size \(vocabSize)")
        }
        var tokens: [GGUFValue] = [], types: [GGUFValue] = []
        tokens.reserveCapacity(vocabSize); types.reserveCapacity(vocabSize)
        for i in 0..<vocabSize {
            guard var t = byId[i] else { tokens.append(.string("[PAD\(i)]")); types.append(.int32(unused)); continue }
            var type = normal
            if let a = added[t] {
                // llama.cpp expects added tokens pre-normalized: the converter round-trips
                // the ones marked not normalized through the tokenizer.
                if (a["normalized"] as? Bool) == false { t = try f.tokenizer.decode(try f.tokenizer.encode(t), skipSpecialTokens: false) }
                if (a["special"] as? Bool) == true || looksSpecial(t) { type = control } else {
                    type = userDefined
                    t = t.replacingOccurrences(of: "\u{2581}", with: " ")
                }
            }
            tokens.append(.string(t)); types.append(.int32(type))
        }
        return (tokens, types)
    }

    /// The pre-tokenizer's name, by the converter's hash; an unknown hash is refused.
    package static func preTokenizerName(_ f: TokenizerFolder) throws -> String {
        let (pre, hash) = try preTokenizer(f.tokenizer)
        guard let pre else {
            throw MoETuneError.file(path: f.path, message: "llama.cpp does not know this tokenizer's pre-tokenizer (check hash \(hash)); it could not load the GGUF")
        }
        return pre
    }

    /// The merges as "a b" strings (a pair [a, b] with spaces inside a part as U+0120).
    package static func mergeList(_ f: TokenizerFolder) throws -> [GGUFValue] {
        var merges: [GGUFValue] = []
        for (i, m) in (f.model["merges"] as? [Any] ?? []).enumerated() {
            if let s = m as? String { merges.append(.string(s)); continue }
            guard let p = m as? [Any], p.count == 2, let a = p[0] as? String, let b = p[1] as? String else {
                throw f.reader.fail("model.merges[\(i)]", "must be \"a b\" or [a, b]")
            }
            let enc = { (s: String) in s.replacingOccurrences(of: " ", with: "\u{0120}") }
            merges.append(.string(enc(a) + " " + enc(b)))
        }
        return merges
    }

    /// The chat template: tokenizer_config.json's string, else (absent or null) the folder's
    /// chat_template.jinja or chat_template.json; nil when none. A list of named templates is refused.
    package static func chatTemplate(_ tc: [String: Any], folder f: TokenizerFolder) throws -> String? {
        if let t = tc["chat_template"] as? String { return t }
        if tc["chat_template"] == nil || tc["chat_template"] is JSONNull {
            let jinja = f.dir.appendingPathComponent("chat_template.jinja"), cj = f.dir.appendingPathComponent("chat_template.json")
            if FileManager.default.fileExists(atPath: jinja) { return try String(contentsOfFile: jinja, encoding: .utf8) }
            if FileManager.default.fileExists(atPath: cj) { return try JSONReader.parse(path: cj)["chat_template"] as? String }
            return nil
        }
        if tc["chat_template"] is [Any] {
            throw f.configReader.fail("chat_template", "a list of named templates is not supported for GGUF output")
        }
        throw f.configReader.fail("chat_template", "must be a string or a list of {name, template}, got \(Printable.quoted("\(tc["chat_template"]!)"))")
    }

    /// `normalizer.lowercase` / `normalizer.strip_accents` from tokenizer.json's normalizer
    /// (Lowercase, StripAccents, BertNormalizer, inside a Sequence too); none without one.
    package static func normalizerKeys(_ json: [String: Any]) -> [(String, GGUFValue)] {
        guard let n = json["normalizer"] as? [String: Any] else { return [] }
        var lower: Bool?, strip: Bool?
        func parse(_ n: [String: Any]) {
            switch n["type"] as? String {
            case "Lowercase": lower = true
            case "StripAccents": strip = true
            case "BertNormalizer":
                if let v = n["lowercase"] as? Bool { lower = v }
                if let v = n["strip_accents"] as? Bool { strip = v }
            case "Sequence": for m in n["normalizers"] as? [[String: Any]] ?? [] { parse(m) }
            default: break
            }
        }
        parse(n)
        var out: [(String, GGUFValue)] = []
        if let lower { out.append(("tokenizer.ggml.normalizer.lowercase", .bool(lower))) }
        if let strip { out.append(("tokenizer.ggml.normalizer.strip_accents", .bool(strip))) }
        return out
    }

    /// llama.cpp's name of the tokenizer's pre-tokenizer (nil: unknown to it) and the hash
    /// it is known by: SHA-256 of the Python list text of the check text's ids.
    package static func preTokenizer(_ tok: HFTokenizer) throws -> (name: String?, hash: String) {
        let ids = try tok.encode(GGUFPreTokenizers.checkText, addSpecialTokens: true)
        let hash = SHA256.hex(Array(("[" + ids.map { String($0) }.joined(separator: ", ") + "]").utf8))
        return (GGUFPreTokenizers.byHash[hash], hash)
    }

    /// The converter's does_token_look_special.
    package static func looksSpecial(_ t: String) -> Bool {
        ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(t)
            || (t.hasPrefix("<|") && t.hasSuffix("|>")) || (t.hasPrefix("<\u{FF5C}") && t.hasSuffix("\u{FF5C}>"))
            || (t.hasPrefix("<unused") && t.hasSuffix(">"))
    }
}

extension GGUFVocabulary {
    /// gguf-py's SpecialVocab for a gpt2-style tokenizer: the special token ids and the
    /// add_bos/add_eos/add_sep flags, from the post-processor, tokenizer_config.json (amended as
    /// the converter amends it: a missing BOS from CLS, EOS from SEP, ...) and config.json.
    package struct SpecialVocab {
        /// The kinds looked up, in order (eot and eom join when the post-processor moves EOS).
        package var typesOrder = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        /// add_<kind>_token flags, in the order first set.
        package var addSpecial: [(String, Bool)] = []
        /// Token ids by kind, the first found kept, in the order found.
        package var ids: [(String, Int)] = []
        /// tokenizer_config.json as amended (nil when the folder has none).
        package var tc: [String: Any]?
        package var bos: String?, cls: String?, eos: String?, sep: String?

        /// The special tokens of tokenizer_config.json (`reader` names it in errors).
        package init(config tc: [String: Any]?, reader cr: JSONReader) throws {
            self.tc = tc
            // The same rule as the tokenizer's: a special token that is neither a string nor
            // {"content": string} is refused, not taken as absent.
            for key in ChatTemplateRenderer.specialTokenKeys {
                if let v = tc?[key], !(v is JSONNull), Self.content(v) == nil {
                    throw cr.fail(key, "must be a token string or {\"content\": string}, got \(Printable.quoted("\(v)"))")
                }
            }
            bos = Self.content(tc?["bos_token"]); cls = Self.content(tc?["cls_token"])
            eos = Self.content(tc?["eos_token"]); sep = Self.content(tc?["sep_token"])
            if (bos ?? "").isEmpty, let c = cls, !c.isEmpty, self.tc != nil { self.tc!["bos_token"] = c; bos = c }
            if (eos ?? "").isEmpty, let s = sep, !s.isEmpty, self.tc != nil { self.tc!["eos_token"] = s; eos = s }
        }

        /// A token string, or the content of {"content": string}.
        package static func content(_ v: Any?) -> String? { (v as? String) ?? ((v as? [String: Any])?["content"] as? String) }

        /// Sets add_<t>_token to v, unless already set and `keep`.
        package mutating func setAdd(_ t: String, _ v: Bool, keep: Bool) {
            if let i = addSpecial.firstIndex(where: { $0.0 == t }) { if !keep { addSpecial[i].1 = v } } else { addSpecial.append((t, v)) }
        }

        /// Records the id of kind t, unless nil or one is already recorded.
        package mutating func setId(_ t: String, _ id: Int?) {
            guard let id, !ids.contains(where: { $0.0 == t }) else { return }
            ids.append((t, id))
        }

        /// tokenizer.json's post_processor (or each of a Sequence's processors).
        package mutating func postProcessor(_ pp: [String: Any]) {
            for p in (pp["processors"] as? [[String: Any]]) ?? [pp] {
                switch p["type"] as? String {
                case "ByteLevel":
                    setAdd("bos", false, keep: true); setAdd("eos", false, keep: true)
                case "RobertaProcessing":
                    setAdd("bos", true, keep: false); setAdd("eos", true, keep: false); setAdd("sep", true, keep: false)
                    if (cls ?? "").isEmpty, tc != nil { cls = ((p["cls"] as? [Any])?.first as? String) ?? bos; tc!["cls_token"] = cls as Any }
                    if (sep ?? "").isEmpty, tc != nil { sep = ((p["sep"] as? [Any])?.first as? String) ?? eos; tc!["sep_token"] = sep as Any }
                case "TemplateProcessing":
                    let (first, last) = templateSingle(p["single"] as? [[String: Any]] ?? [])
                    templatePair(p["pair"] as? [[String: Any]] ?? [], first: first, last: last)
                default: break
                }
            }
        }

        /// The id of a template item {"SpecialToken": {"id": ...}}, nil for any other or an empty id.
        package static func special(_ e: [String: Any]?) -> String? {
            guard let s = (e?["SpecialToken"] as? [String: Any])?["id"] as? String, !s.isEmpty else { return nil }
            return s
        }

        /// TemplateProcessing's `single` (two items or more): a special token first is BOS (added
        /// when it is BOS or CLS), one last EOS (an EOS other than the config's moves it to eot,
        /// then eom). Returns the two special tokens found.
        package mutating func templateSingle(_ single: [[String: Any]]) -> (first: String?, last: String?) {
            guard single.count > 1 else { return (nil, nil) }
            var first: String?, last: String?
            if let f = Self.special(single.first) {
                first = f
                if tc == nil { bos = f } else if f != bos && f != cls {
                    if (bos ?? "").isEmpty { tc!["bos_token"] = f; bos = f }
                    if (cls ?? "").isEmpty { tc!["cls_token"] = f; cls = f }
                }
                setAdd("bos", f == bos || f == cls, keep: false)
            }
            if let l = Self.special(single.last) {
                last = l
                if tc == nil { eos = l } else if l != eos {
                    if !typesOrder.contains("eot") { typesOrder.append("eot"); tc!["eot_token"] = eos as Any }
                    else if !typesOrder.contains("eom") { typesOrder.append("eom"); tc!["eom_token"] = eos as Any }
                    tc!["eos_token"] = l; eos = l
                }
                setAdd("eos", l == eos, keep: false)
            }
            return (first, last)
        }

        /// TemplateProcessing's `pair`: between the single template's first and last tokens,
        /// sequence A, then a SEP (or EOS) token before sequence B sets add_sep.
        package mutating func templatePair(_ pair: [[String: Any]], first: String?, last: String?) {
            guard !pair.isEmpty else { return }
            let start = (first != nil && Self.special(pair.first) == first) ? 1 : 0
            let stop = (last != nil && Self.special(pair.last) == last) ? pair.count - 1 : pair.count
            var mid = start < stop ? Array(pair[start..<stop]) : []
            guard !mid.isEmpty else { return }
            let seqA = (mid.first?["Sequence"] as? [String: Any])?["id"] as? String
            let seqB = (mid.last?["Sequence"] as? [String: Any])?["id"] as? String
            guard seqA == "A", seqB == "B", mid.count > 2 else { return }
            mid = Array(mid[1..<(mid.count - 1)])
            var addSep = false
            if let e = Self.special(mid.first), (e == sep || e == eos), last == nil { addSep = true }
            if mid.count == 2, let e = Self.special(mid[1]), e == sep || e == eos { addSep = true }
            setAdd("sep", addSep, keep: false)
            if addSep, (sep ?? "").isEmpty, tc != nil { tc!["sep_token"] = eos as Any; sep = eos }
        }

        /// The ids and add_* flags of tokenizer_config.json (its *_token looked up among the
        /// added tokens), then config.json's *_token_id for the kinds still without one.
        package mutating func readIds(added: [[String: Any]], modelConfig: String) throws {
            if let tc {
                for t in typesOrder {
                    if let a = tc["add_\(t)_token"] as? Bool { setAdd(t, a, keep: true) }
                    guard let c = Self.content(tc["\(t)_token"]) else { continue }
                    let id = added.first { ($0["content"] as? String) == c }.flatMap { $0["id"] as? Int }
                    setId(t, id)
                }
            }
            if FileManager.default.fileExists(atPath: modelConfig) {
                let c = try JSONReader.parse(path: modelConfig)
                for t in typesOrder { setId(t, c["\(t)_token_id"] as? Int) }
            }
        }

        /// The `tokenizer.ggml.*_token_id` keys (gguf-py has none for cls), then add_bos/eos/sep_token.
        package func keys(folder: String) throws -> [(String, GGUFValue)] {
            let idKeys = ["bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
                          "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id", "eom": "eom_token_id"]
            var out: [(String, GGUFValue)] = []
            for (t, id) in ids {
                guard let k = idKeys[t] else { continue }
                guard id >= 0 else { throw MoETuneError.file(path: folder, message: "invalid \(t) token id \(id)") }
                out.append(("tokenizer.ggml.\(k)", .uint32(UInt32(id))))
            }
            for (t, v) in addSpecial where ["bos", "eos", "sep"].contains(t) { out.append(("tokenizer.ggml.add_\(t)_token", .bool(v))) }
            return out
        }
    }
}
