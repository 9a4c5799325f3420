import MoEFormats
/// JSON both ways for templates: `tojson` as transformers overrides it (Python's `json.dumps`
/// with ensure_ascii=False, indent, separators and sort_keys passed through), and reading JSON
/// into template values with the key order kept (messages and tool schemas).
package enum JinjaJSON {
    package static func dumps(_ v: JinjaValue, ensureASCII: Bool = false, indent: String? = nil,
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

    package static func quote(_ s: String, ensureASCII: Bool) -> String {
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

    /// Parses JSON text into a template value (objects keep their key order), with the
    /// tokenizer files' JSONParser.
    package static func parse(_ text: String) throws -> JinjaValue {
        do {
            return value(try JSONParser.parse(Array(text.utf8), orderedObjects: true))
        } catch let JSONParser.Failure.at(at, message) {
            throw MoETuneError.invalid("JSON: \(message) at byte \(at)")
        }
    }

    private static func value(_ v: Any) -> JinjaValue {
        switch v {
        case let o as OrderedObject:
            var d = JinjaDict()
            for (k, x) in o.pairs { d[k] = value(x) }
            return .dict(d)
        case let a as [Any]: return .list(a.map(value))
        case let s as String: return .string(s)
        case let t as Bool: return .bool(t)
        case let n as Int: return .int(n)
        case let x as Double: return .float(x)
        default: return .none
        }
    }
}
