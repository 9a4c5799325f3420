import MoEFormats
/// A small JSON parser for tokenizer files. Foundation's JSONSerialization loses vocabulary
/// entries: Swift dictionary keys compare by canonical equivalence ("é" == "e\u{301}"), and
/// a lone U+FEFF string comes back empty. Here strings keep their exact bytes, and the
/// object under a "vocab" key is returned as VocabPairs, in file order.
/// Values: [String: Any], [Any], String, Int, Double, Bool, NSNull-like `JSONNull`; with
/// `orderedObjects`, every object is an `OrderedObject` in file order (chat templates and
/// messages, where key order shows in the rendered text). The one JSON reader of the
/// tokenizer files and the chat templates.
package struct VocabPairs {
    package var pairs: [(String, Any)]
    package init(pairs: [(String, Any)]) { self.pairs = pairs }
}
package struct OrderedObject {
    package var pairs: [(String, Any)]
    package init(pairs: [(String, Any)]) { self.pairs = pairs }
}
package struct JSONNull {}

package struct JSONParser {
    package let b: [UInt8]
    package var i = 0
    package var orderedObjects = false
    /// Deeper nesting is refused instead of overflowing the stack.
    package static let maxDepth = 500

    package enum Failure: Error { case at(Int, String) }

    package static func parse(_ bytes: [UInt8], orderedObjects: Bool = false) throws -> Any {
        var p = JSONParser(b: bytes)
        p.orderedObjects = orderedObjects
        if p.b.starts(with: [0xEF, 0xBB, 0xBF]) { p.i = 3 }
        let v = try p.value(key: nil, depth: 0)
        p.ws()
        guard p.i == p.b.count else { throw Failure.at(p.i, "trailing characters") }
        return v
    }

    package mutating func ws() { while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 } }

    package mutating func value(key: String?, depth: Int) throws -> Any {
        ws()
        guard depth < JSONParser.maxDepth else { throw Failure.at(i, "nested too deeply") }
        guard i < b.count else { throw Failure.at(i, "unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var pairs: [(String, Any)] = []
            ws()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1 } else {
                while true {
                    ws()
                    guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw Failure.at(i, "expected a key") }
                    let k = try string()
                    ws()
                    guard i < b.count, b[i] == UInt8(ascii: ":") else { throw Failure.at(i, "expected ':'") }
                    i += 1
                    pairs.append((k, try value(key: k, depth: depth + 1)))
                    ws()
                    guard i < b.count else { throw Failure.at(i, "unexpected end") }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    if b[i] == UInt8(ascii: "}") { i += 1; break }
                    throw Failure.at(i, "expected ',' or '}'")
                }
            }
            if orderedObjects { return OrderedObject(pairs: pairs) }
            if key == "vocab" { return VocabPairs(pairs: pairs) }
            var d: [String: Any] = [:]
            for (k, v) in pairs { d[k] = v }
            return d
        case UInt8(ascii: "["):
            i += 1
            var a: [Any] = []
            ws()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return a }
            while true {
                a.append(try value(key: nil, depth: depth + 1))
                ws()
                guard i < b.count else { throw Failure.at(i, "unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return a }
                throw Failure.at(i, "expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return try string()
        case UInt8(ascii: "t"): return try literal("true", true)
        case UInt8(ascii: "f"): return try literal("false", false)
        case UInt8(ascii: "n"): return try literal("null", JSONNull())
        default:
            return try number()
        }
    }

    package mutating func literal(_ word: String, _ v: Any) throws -> Any {
        let w = Array(word.utf8)
        guard i + w.count <= b.count, Array(b[i..<(i + w.count)]) == w else { throw Failure.at(i, "unexpected character") }
        i += w.count
        return v
    }

    package mutating func number() throws -> Any {
        let start = i
        while i < b.count, "+-0123456789.eE".utf8.contains(b[i]) { i += 1 }
        let s = String(decoding: b[start..<i], as: UTF8.self)
        if let n = Int(s) { return n }
        if let d = Double(s) { return d }
        throw Failure.at(start, "bad value")
    }

    package mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw Failure.at(i, "bad \\u escape")
        }
        i += 4
        return v
    }

    package mutating func string() throws -> String {
        i += 1
        var out: [UInt8] = []
        var start = i
        while true {
            guard i < b.count else { throw Failure.at(i, "unterminated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { out += b[start..<i]; i += 1; break }
            if c != UInt8(ascii: "\\") { i += 1; continue }
            out += b[start..<i]
            i += 1
            guard i < b.count else { throw Failure.at(i, "unterminated string") }
            let e = b[i]; i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"):
                var v = try hex4()
                if v >= 0xD800 && v < 0xDC00, i + 6 <= b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") {
                    // A high surrogate pairs only with a low one; otherwise it stands alone
                    // (U+FFFD) and the next escape is read on its own.
                    let mark = i
                    i += 2
                    let lo = try hex4()
                    if lo >= 0xDC00 && lo < 0xE000 { v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00) } else { i = mark }
                }
                out += Array(String(Unicode.Scalar(v) ?? "\u{FFFD}").utf8)
            default: out.append(e)
            }
            start = i
        }
        return String(decoding: out, as: UTF8.self)
    }
}
