/// JSON both ways for templates: `tojson` as transformers overrides it (Python's `json.dumps`
/// with ensure_ascii=False, indent, separators and sort_keys passed through), and reading JSON
/// into template values with the key order kept (messages and tool schemas).
enum JinjaJSON {
    static func dumps(_ v: JinjaValue, ensureASCII: Bool = false, indent: String? = nil,
                      itemSeparator: String? = nil, keySeparator: String? = nil, sortKeys: Bool = false) throws -> String {
        let item = itemSeparator ?? (indent == nil ? ", " : ",")
        let key = keySeparator ?? ": "
        var out = ""
        try write(v, &out, level: 0, ensureASCII: ensureASCII, indent: indent, item: item, key: key, sortKeys: sortKeys)
        return out
    }

    private static func write(_ v: JinjaValue, _ out: inout String, level: Int, ensureASCII: Bool, indent: String?,
                              item: String, key: String, sortKeys: Bool) throws {
        if level > 500 { throw JinjaError(line: 0, message: "tojson: value nested too deeply") }
        func newline(_ l: Int) {
            guard let indent else { return }
            out += "\n"
            for _ in 0..<l { out += indent }
        }
        switch v {
        case .none: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .float(d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += JinjaValue.pythonFloat(d) }
        case let .string(s): out += quote(s, ensureASCII: ensureASCII)
        case let .list(a), let .tuple(a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (i, x) in a.enumerated() {
                if i > 0 { out += item }
                newline(level + 1)
                try write(x, &out, level: level + 1, ensureASCII: ensureASCII, indent: indent, item: item, key: key, sortKeys: sortKeys)
            }
            newline(level)
            out += "]"
        case let .dict(d):
            if d.count == 0 { out += "{}"; return }
            var pairs: [(String, JinjaValue)] = []
            for (k, x) in d.pairs {
                let ks: String
                switch k {
                case let .string(s): ks = s
                case let .int(i): ks = String(i)
                case let .bool(b): ks = b ? "true" : "false"
                case .none: ks = "null"
                case let .float(f): ks = JinjaValue.pythonFloat(f)
                default: throw JinjaError(line: 0, message: "keys must be str, int, float, bool or None, not \(k.typeName)")
                }
                pairs.append((ks, x))
            }
            if sortKeys { pairs.sort { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) } }
            out += "{"
            for (i, (k, x)) in pairs.enumerated() {
                if i > 0 { out += item }
                newline(level + 1)
                out += quote(k, ensureASCII: ensureASCII)
                out += key
                try write(x, &out, level: level + 1, ensureASCII: ensureASCII, indent: indent, item: item, key: key, sortKeys: sortKeys)
            }
            newline(level)
            out += "}"
        default:
            throw JinjaError(line: 0, message: "Object of type \(v.typeName) is not JSON serializable")
        }
    }

    static func quote(_ s: String, ensureASCII: Bool) -> String {
        var out = String.UnicodeScalarView()
        out.append("\"")
        func hex4(_ v: UInt32) {
            for c in "\\u".unicodeScalars { out.append(c) }
            let digits = Array("0123456789abcdef".unicodeScalars)
            for shift in stride(from: 12, through: 0, by: -4) { out.append(digits[Int((v >> UInt32(shift)) & 0xf)]) }
        }
        for u in s.unicodeScalars {
            switch u {
            case "\"": out.append("\\"); out.append("\"")
            case "\\": out.append("\\"); out.append("\\")
            case "\n": out.append("\\"); out.append("n")
            case "\r": out.append("\\"); out.append("r")
            case "\t": out.append("\\"); out.append("t")
            case "\u{08}": out.append("\\"); out.append("b")
            case "\u{0c}": out.append("\\"); out.append("f")
            default:
                if u.value < 0x20 { hex4(u.value) }
                else if ensureASCII && u.value > 0x7e {
                    if u.value > 0xffff {
                        let v = u.value - 0x10000
                        hex4(0xd800 | (v >> 10)); hex4(0xdc00 | (v & 0x3ff))
                    } else { hex4(u.value) }
                } else { out.append(u) }
            }
        }
        out.append("\"")
        return String(out)
    }

    /// Parses JSON text into a template value (objects keep their key order).
    static func parse(_ text: String) throws -> JinjaValue {
        var p = Parser(Array(text.utf8))
        p.skip()
        let v = try p.value(depth: 0)
        p.skip()
        guard p.i == p.b.count else { throw p.fail("trailing characters") }
        return v
    }

    private struct Parser {
        let b: [UInt8]
        var i = 0
        init(_ b: [UInt8]) { self.b = b }

        func fail(_ m: String) -> MoETuneError { .invalid("JSON: \(m) at byte \(i)") }
        mutating func skip() { while i < b.count, b[i] == 0x20 || b[i] == 0x0a || b[i] == 0x0d || b[i] == 0x09 { i += 1 } }
        mutating func literal(_ s: String, _ v: JinjaValue) throws -> JinjaValue {
            let u = Array(s.utf8)
            guard i + u.count <= b.count, Array(b[i..<i + u.count]) == u else { throw fail("bad literal") }
            i += u.count
            return v
        }

        mutating func value(depth: Int) throws -> JinjaValue {
            guard depth < 500 else { throw fail("nested too deeply") }
            guard i < b.count else { throw fail("unexpected end") }
            switch b[i] {
            case UInt8(ascii: "{"):
                i += 1; skip()
                var d = JinjaDict()
                if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .dict(d) }
                while true {
                    skip()
                    guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                    let k = try string()
                    skip()
                    guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    i += 1; skip()
                    d[k] = try value(depth: depth + 1)
                    skip()
                    guard i < b.count else { throw fail("unexpected end") }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    if b[i] == UInt8(ascii: "}") { i += 1; return .dict(d) }
                    throw fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                i += 1; skip()
                var a: [JinjaValue] = []
                if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .list(a) }
                while true {
                    skip()
                    a.append(try value(depth: depth + 1))
                    skip()
                    guard i < b.count else { throw fail("unexpected end") }
                    if b[i] == UInt8(ascii: ",") { i += 1; continue }
                    if b[i] == UInt8(ascii: "]") { i += 1; return .list(a) }
                    throw fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .none)
            default:
                let start = i
                var isFloat = false
                while i < b.count, let c = Optional(b[i]), (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") || c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
                    if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { isFloat = true }
                    i += 1
                }
                let s = String(decoding: b[start..<i], as: UTF8.self)
                if !isFloat, let v = Int(s) { return .int(v) }
                if let d = Double(s), !s.isEmpty { return .float(d) }
                throw fail("bad value")
            }
        }

        mutating func string() throws -> String {
            i += 1
            var bytes: [UInt8] = []
            while i < b.count {
                let c = b[i]
                if c == UInt8(ascii: "\"") { i += 1; return String(decoding: bytes, as: UTF8.self) }
                if c != UInt8(ascii: "\\") { bytes.append(c); i += 1; continue }
                guard i + 1 < b.count else { break }
                let e = b[i + 1]
                i += 2
                switch e {
                case UInt8(ascii: "n"): bytes.append(0x0a)
                case UInt8(ascii: "t"): bytes.append(0x09)
                case UInt8(ascii: "r"): bytes.append(0x0d)
                case UInt8(ascii: "b"): bytes.append(0x08)
                case UInt8(ascii: "f"): bytes.append(0x0c)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if v >= 0xd800 && v < 0xdc00, i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") {
                        i += 2
                        let lo = try hex4()
                        v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00)
                    }
                    bytes.append(contentsOf: Array(String(Unicode.Scalar(v) ?? "\u{fffd}").utf8))
                default: bytes.append(e)
                }
            }
            throw fail("unterminated string")
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<i + 4], as: UTF8.self), radix: 16) else { throw fail("bad \\u escape") }
            i += 4
            return v
        }
    }
}
