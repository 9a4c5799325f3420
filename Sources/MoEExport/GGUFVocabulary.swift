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
        let dir = folder as NSString
        let path = dir.appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: path) else {
            throw MoETuneError.file(path: folder, message: "GGUF output from a model folder needs its tokenizer.json (a gpt2-style byte-level BPE tokenizer)")
        }
        let r = JSONReader(path: path)
        let json = try JSONReader.parse(path: path)
        let tok = try HFTokenizer(directory: folder)
        guard let model = try r.optionalObject(json["model"], "model"), (model["type"] as? String) == "BPE", tok.model.byteLevel, !tok.model.byteFallback else {
            throw r.fail("model", "only gpt2-style byte-level BPE tokenizers can be written to GGUF from a folder (SentencePiece-style vocabularies are not supported yet)")
        }
        let configPath = dir.appendingPathComponent("tokenizer_config.json")
        var tc: [String: Any]? = FileManager.default.fileExists(atPath: configPath) ? try JSONReader.parse(path: configPath) : nil
        let cr = JSONReader(path: configPath)

        // Tokens and their types.
        var byId: [Int: String] = [:]
        guard let vocab = (model["vocab"] as? VocabPairs)?.pairs else { throw r.fail("model.vocab", "must be an object") }
        for (t, v) in vocab { byId[try r.int(v, "model.vocab.\(t)")] = t }
        let addedList = (json["added_tokens"] as? [Any] ?? []).compactMap { $0 as? [String: Any] }
        var added: [String: [String: Any]] = [:]
        for a in addedList {
            guard let content = a["content"] as? String else { continue }
            byId[try r.int(a["id"], "added_tokens.id")] = content
            added[content] = a
        }
        if let top = byId.keys.max(), top >= vocabSize {
            throw MoETuneError.file(path: path, message: "token id \(top) is not below config.json's vocab_size \(vocabSize)")
        }
        var tokens: [GGUFValue] = [], types: [GGUFValue] = []
        tokens.reserveCapacity(vocabSize); types.reserveCapacity(vocabSize)
        for i in 0..<vocabSize {
            guard var t = byId[i] else { tokens.append(.string("[PAD\(i)]")); types.append(.int32(unused)); continue }
            var type = normal
            if let a = added[t] {
                // llama.cpp expects added tokens pre-normalized: the converter round-trips
                // the ones marked not normalized through the tokenizer.
                if (a["normalized"] as? Bool) == false { t = try tok.decode(try tok.encode(t), skipSpecialTokens: false) }
                if (a["special"] as? Bool) == true || looksSpecial(t) { type = control } else {
                    type = userDefined
                    t = t.replacingOccurrences(of: "\u{2581}", with: " ")
                }
            }
            tokens.append(.string(t)); types.append(.int32(type))
        }

        // The pre-tokenizer's name, by the converter's hash.
        let (pre_, hash) = try preTokenizer(tok)
        guard let pre = pre_ else {
            throw MoETuneError.file(path: path, message: "llama.cpp does not know this tokenizer's pre-tokenizer (check hash \(hash)); it could not load the GGUF")
        }

        // Merges.
        var merges: [GGUFValue] = []
        for (i, m) in (model["merges"] as? [Any] ?? []).enumerated() {
            if let s = m as? String { merges.append(.string(s)); continue }
            guard let p = m as? [Any], p.count == 2, let a = p[0] as? String, let b = p[1] as? String else {
                throw r.fail("model.merges[\(i)]", "must be \"a b\" or [a, b]")
            }
            let enc = { (s: String) in s.replacingOccurrences(of: " ", with: "\u{0120}") }
            merges.append(.string(enc(a) + " " + enc(b)))
        }

        var out: [(String, GGUFValue)] = []
        func set(_ k: String, _ v: GGUFValue) {
            if let i = out.firstIndex(where: { $0.0 == k }) { out[i].1 = v } else { out.append((k, v)) }
        }
        if let p = tc?["add_prefix_space"] as? Bool { set("tokenizer.ggml.add_space_prefix", .bool(p)) }
        set("tokenizer.ggml.model", .string("gpt2"))
        set("tokenizer.ggml.pre", .string(pre))
        set("tokenizer.ggml.tokens", .array(.string, tokens))
        set("tokenizer.ggml.token_type", .array(.int32, types))
        if !merges.isEmpty { set("tokenizer.ggml.merges", .array(.string, merges)) }

        // gguf-py's SpecialVocab: the post-processor, tokenizer_config.json, config.json.
        var typesOrder = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        var addSpecial: [(String, Bool)] = []
        func setAdd(_ t: String, _ v: Bool, keep: Bool) {
            if let i = addSpecial.firstIndex(where: { $0.0 == t }) { if !keep { addSpecial[i].1 = v } } else { addSpecial.append((t, v)) }
        }
        func content(_ v: Any?) -> String? { (v as? String) ?? ((v as? [String: Any])?["content"] as? String) }
        // The same rule as the tokenizer's: a special token that is neither a string nor
        // {"content": string} is refused, not taken as absent.
        for key in ChatTemplateRenderer.specialTokenKeys {
            if let v = tc?[key], !(v is JSONNull), content(v) == nil {
                throw cr.fail(key, "must be a token string or {\"content\": string}, got \(Printable.quoted("\(v)"))")
            }
        }
        var bos = content(tc?["bos_token"]), cls = content(tc?["cls_token"]), eos = content(tc?["eos_token"]), sep = content(tc?["sep_token"])
        if (bos ?? "").isEmpty, let c = cls, !c.isEmpty, tc != nil { tc!["bos_token"] = c; bos = c }
        if (eos ?? "").isEmpty, let s = sep, !s.isEmpty, tc != nil { tc!["eos_token"] = s; eos = s }
        if let pp = json["post_processor"] as? [String: Any] {
            for p in (pp["processors"] as? [[String: Any]]) ?? [pp] {
                switch p["type"] as? String {
                case "ByteLevel":
                    setAdd("bos", false, keep: true); setAdd("eos", false, keep: true)
                case "RobertaProcessing":
                    setAdd("bos", true, keep: false); setAdd("eos", true, keep: false); setAdd("sep", true, keep: false)
                    if (cls ?? "").isEmpty, tc != nil { cls = ((p["cls"] as? [Any])?.first as? String) ?? bos; tc!["cls_token"] = cls as Any }
                    if (sep ?? "").isEmpty, tc != nil { sep = ((p["sep"] as? [Any])?.first as? String) ?? eos; tc!["sep_token"] = sep as Any }
                case "TemplateProcessing":
                    let single = p["single"] as? [[String: Any]] ?? [], pair = p["pair"] as? [[String: Any]] ?? []
                    func special(_ e: [String: Any]?) -> String? {
                        guard let s = (e?["SpecialToken"] as? [String: Any])?["id"] as? String, !s.isEmpty else { return nil }
                        return s
                    }
                    var first: String?, last: String?
                    if single.count > 1 {
                        if let f = special(single.first) {
                            first = f
                            if tc == nil { bos = f } else if f != bos && f != cls {
                                if (bos ?? "").isEmpty { tc!["bos_token"] = f; bos = f }
                                if (cls ?? "").isEmpty { tc!["cls_token"] = f; cls = f }
                            }
                            setAdd("bos", f == bos || f == cls, keep: false)
                        }
                        if let l = special(single.last) {
                            last = l
                            if tc == nil { eos = l } else if l != eos {
                                if !typesOrder.contains("eot") { typesOrder.append("eot"); tc!["eot_token"] = eos as Any }
                                else if !typesOrder.contains("eom") { typesOrder.append("eom"); tc!["eom_token"] = eos as Any }
                                tc!["eos_token"] = l; eos = l
                            }
                            setAdd("eos", l == eos, keep: false)
                        }
                    }
                    if !pair.isEmpty {
                        let start = (first != nil && special(pair.first) == first) ? 1 : 0
                        let stop = (last != nil && special(pair.last) == last) ? pair.count - 1 : pair.count
                        var mid = start < stop ? Array(pair[start..<stop]) : []
                        if !mid.isEmpty {
                            let seqA = (mid.first?["Sequence"] as? [String: Any])?["id"] as? String
                            let seqB = (mid.last?["Sequence"] as? [String: Any])?["id"] as? String
                            if seqA == "A", seqB == "B", mid.count > 2 {
                                mid = Array(mid[1..<(mid.count - 1)])
                                var addSep = false
                                if let e = special(mid.first), (e == sep || e == eos), last == nil { addSep = true }
                                if mid.count == 2, let e = special(mid[1]), e == sep || e == eos { addSep = true }
                                setAdd("sep", addSep, keep: false)
                                if addSep, (sep ?? "").isEmpty, tc != nil { tc!["sep_token"] = eos as Any; sep = eos }
                            }
                        }
                    }
                default: break
                }
            }
        }
        var ids_: [(String, Int)] = []
        func setId(_ t: String, _ id: Int?) {
            guard let id, !ids_.contains(where: { $0.0 == t }) else { return }
            ids_.append((t, id))
        }
        var template: String?
        if let tc {
            if let t = tc["chat_template"] as? String { template = t }
            else if tc["chat_template"] == nil || tc["chat_template"] is JSONNull {
                let jinja = dir.appendingPathComponent("chat_template.jinja"), cj = dir.appendingPathComponent("chat_template.json")
                if FileManager.default.fileExists(atPath: jinja) { template = try String(contentsOfFile: jinja, encoding: .utf8) }
                else if FileManager.default.fileExists(atPath: cj) { template = try JSONReader.parse(path: cj)["chat_template"] as? String }
            } else if tc["chat_template"] is [Any] {
                throw cr.fail("chat_template", "a list of named templates is not supported for GGUF output")
            } else {
                throw cr.fail("chat_template", "must be a string or a list of {name, template}, got \(Printable.quoted("\(tc["chat_template"]!)"))")
            }
            for t in typesOrder {
                if let a = tc["add_\(t)_token"] as? Bool { setAdd(t, a, keep: true) }
                guard let c = content(tc["\(t)_token"]) else { continue }
                let id = addedList.first { ($0["content"] as? String) == c }.flatMap { $0["id"] as? Int }
                setId(t, id)
            }
        }
        let modelConfig = dir.appendingPathComponent("config.json")
        if FileManager.default.fileExists(atPath: modelConfig) {
            let c = try JSONReader.parse(path: modelConfig)
            for t in typesOrder { setId(t, c["\(t)_token_id"] as? Int) }
        }
        let idKeys = ["bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
                      "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id", "eom": "eom_token_id"]
        for (t, id) in ids_ {
            guard let k = idKeys[t] else { continue }   // gguf-py has no key for cls
            guard id >= 0 else { throw MoETuneError.file(path: folder, message: "invalid \(t) token id \(id)") }
            set("tokenizer.ggml.\(k)", .uint32(UInt32(id)))
        }
        for (t, v) in addSpecial where ["bos", "eos", "sep"].contains(t) { set("tokenizer.ggml.add_\(t)_token", .bool(v)) }
        if let template { set("tokenizer.chat_template", .string(template)) }
        if let n = json["normalizer"] as? [String: Any] {
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
            if let lower { set("tokenizer.ggml.normalizer.lowercase", .bool(lower)) }
            if let strip { set("tokenizer.ggml.normalizer.strip_accents", .bool(strip)) }
        }
        if architecture == "llama", vocabSize == 49152 { set("tokenizer.ggml.add_bos_token", .bool(false)) }
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
