import Foundation
import MoEFormats

/// tokenizer.json decoders: token strings back to text, as Hugging Face chains them.
package indirect enum TokenDecoder: Sendable {
    case byteLevel
    case metaspace(replacement: String, prependScheme: PreTokenizer.PrependScheme)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case replace(pattern: String, content: String)
    case sequence([TokenDecoder])

    package static func parse(_ r: JSONReader, _ value: Any?, key: String) throws -> TokenDecoder? {
        guard let o = try r.optionalObject(value, key) else { return nil }
        let type = try r.string(o, "type", key)
        switch type {
        case "ByteLevel": return .byteLevel
        case "ByteFallback": return .byteFallback
        case "Fuse": return .fuse
        case "Metaspace":
            var scheme: PreTokenizer.PrependScheme = .always
            if let s = try r.optionalString(o, "prepend_scheme", key) {
                guard let p = PreTokenizer.PrependScheme(rawValue: s) else { throw r.fail("\(key).prepend_scheme", "\(Printable.quoted(s)) is not supported") }
                scheme = p
            } else if o["add_prefix_space"] != nil {
                scheme = try r.bool(o, "add_prefix_space", key, default: true) ? .always : .never
            }
            return .metaspace(replacement: try r.string(o, "replacement", key), prependScheme: scheme)
        case "Strip":
            let c = try r.string(o, "content", key)
            guard c.unicodeScalars.count == 1, let ch = c.unicodeScalars.first else { throw r.fail("\(key).content", "must be one character") }
            return .strip(content: ch, start: try r.int(o["start"] ?? 0, "\(key).start"), stop: try r.int(o["stop"] ?? 0, "\(key).stop"))
        case "Replace":
            let p = try r.object(o, "pattern", key)
            guard let s = p["String"] as? String else { throw r.fail("\(key).pattern", "only {\"String\": ...} patterns are supported in decoders") }
            return .replace(pattern: s, content: try r.string(o, "content", key))
        case "Sequence":
            let list = try r.array(o, "decoders", key)
            return .sequence(try list.enumerated().compactMap { try parse(r, $1, key: "\(key).decoders[\($0)]") })
        default:
            throw r.unsupported(key, type)
        }
    }

    package func run(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for t in tokens { bytes += ByteLevelMap.bytes(of: t) }
            return [String(decoding: bytes, as: UTF8.self)]
        case let .metaspace(rep, scheme):
            return tokens.enumerated().map { i, t in
                replaceBytes(t, rep, i == 0 && scheme != .never ? "" : " ")
            }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) { out.append(s) } else {
                    out.append(contentsOf: Array(repeating: "\u{FFFD}", count: pending.count))
                }
                pending.removeAll()
            }
            for t in tokens {
                let u = Array(t.utf8)
                if u.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">"), let v = UInt8(String(t.dropFirst(3).prefix(2)), radix: 16) {
                    pending.append(v)
                } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case let .strip(c, start, stop):
            return tokens.map { t in
                var chars = Array(t.unicodeScalars)
                var s = 0
                while s < start, s < chars.count, chars[s] == c { s += 1 }
                chars.removeFirst(s)
                var e = 0
                while e < stop, e < chars.count, chars[chars.count - 1 - e] == c { e += 1 }
                chars.removeLast(e)
                var out = String.UnicodeScalarView()
                out.append(contentsOf: chars)
                return String(out)
            }
        case let .replace(p, content):
            return tokens.map { replaceBytes($0, p, content) }
        case let .sequence(list):
            return list.reduce(tokens) { $1.run($0) }
        }
    }
}

/// Replaces every occurrence of `pattern` in `s`, comparing UTF-8 bytes (a Foundation search
/// would compare grapheme clusters and miss "▁" followed by a combining mark).
package func replaceBytes(_ s: String, _ pattern: String, _ with: String) -> String {
    let b = Array(s.utf8), p = Array(pattern.utf8), w = Array(with.utf8)
    guard !p.isEmpty, b.count >= p.count else { return s }
    var out: [UInt8] = []
    out.reserveCapacity(b.count)
    var i = 0
    while i < b.count {
        if i + p.count <= b.count, b[i] == p[0], Array(b[i..<(i + p.count)]) == p { out += w; i += p.count } else { out.append(b[i]); i += 1 }
    }
    return String(decoding: out, as: UTF8.self)
}

/// tokenizer.json post-processors, for one sequence: the special ids put before and after it.
package enum PostProcessor {
    package static func parse(_ r: JSONReader, _ value: Any?, key: String) throws -> (prefix: [Int32], suffix: [Int32]) {
        guard let o = try r.optionalObject(value, key) else { return ([], []) }
        let type = try r.string(o, "type", key)
        switch type {
        case "ByteLevel": return ([], [])
        case "Sequence":
            var pre: [Int32] = [], suf: [Int32] = []
            for (i, p) in try r.array(o, "processors", key).enumerated() {
                let (a, b) = try parse(r, p, key: "\(key).processors[\(i)]")
                pre = a + pre; suf += b
            }
            return (pre, suf)
        case "RobertaProcessing", "BertProcessing":
            guard let cls = o["cls"] as? [Any], cls.count == 2, let sep = o["sep"] as? [Any], sep.count == 2 else {
                throw r.fail(key, "cls and sep must be [token, id]")
            }
            return ([try r.tokenId(cls[1], "\(key).cls")], [try r.tokenId(sep[1], "\(key).sep")])
        case "TemplateProcessing":
            let specials = try r.optionalObject(o["special_tokens"], "\(key).special_tokens") ?? [:]
            var pre: [Int32] = [], suf: [Int32] = []
            var seenA = false
            for (i, item) in try r.array(o, "single", key).enumerated() {
                let k = "\(key).single[\(i)]"
                guard let piece = item as? [String: Any] else { throw r.fail(k, "must be an object") }
                if piece["Sequence"] != nil { seenA = true; continue }
                guard let sp = piece["SpecialToken"] as? [String: Any], let name = sp["id"] as? String else {
                    throw r.fail(k, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}")
                }
                guard let entry = specials[name] as? [String: Any], let ids = entry["ids"] as? [Any] else {
                    throw r.fail("\(key).special_tokens", "\(Printable.quoted(name)) is missing")
                }
                let v = try ids.map { try r.tokenId($0, "\(key).special_tokens.\(name).ids") }
                if seenA { suf += v } else { pre += v }
            }
            return (pre, suf)
        default:
            throw r.unsupported(key, type)
        }
    }
}
