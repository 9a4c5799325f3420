/// Text that comes from a file (a tensor, key or token name, a pattern, a value) made safe
/// for a one-line message on a terminal: control characters, line and paragraph separators,
/// invisible and bidirectional formatting characters and replaced (invalid UTF-8) bytes are
/// written as escapes (`\n`, `\u{1B}`, `\u{202E}`, `\xC3`), and the text is cut after
/// `limit` characters with the size of the rest. Every place a file-provided name enters
/// an error message goes through here: a fuzzed file used to write kilobytes of binary and
/// escape sequences to the terminal.
public enum Printable {
    /// Characters of a name kept before it is cut.
    public static let defaultLimit = 120

    /// `s`, escaped and cut.
    public static func text(_ s: String, limit: Int = defaultLimit) -> String {
        var out = ""
        var shown = 0
        var rest = 0
        for (i, u) in s.unicodeScalars.enumerated() {
            if shown >= limit {
                rest = s.unicodeScalars.count - i
                break
            }
            append(u, to: &out)
            shown += 1
        }
        return rest > 0 ? out + "… (\(rest) more characters)" : out
    }

    /// Raw bytes (of a name not yet decoded), invalid UTF-8 shown byte by byte as `\xNN`.
    public static func text<C: Collection>(bytes: C, limit: Int = defaultLimit) -> String where C.Element == UInt8 {
        let b = Array(bytes)
        var out = ""
        var shown = 0
        var i = 0
        while i < b.count {
            if shown >= limit { return out + "… (\(b.count - i) more bytes)" }
            if let (u, n) = decode(b, at: i) {
                append(u, to: &out)
                i += n
            } else {
                out += "\\x" + hex(UInt32(b[i]), width: 2)
                i += 1
            }
            shown += 1
        }
        return out
    }

    /// `'text'`: the escaped, cut name in single quotes.
    public static func quoted(_ s: String, limit: Int = defaultLimit) -> String { "'" + text(s, limit: limit) + "'" }

    private static func append(_ u: Unicode.Scalar, to out: inout String) {
        switch u.value {
        case 0x0A: out += "\\n"
        case 0x09: out += "\\t"
        case 0x0D: out += "\\r"
        case 0x00..<0x20, 0x7F..<0xA0, 0xAD, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x206F, 0xFEFF, 0xFFF9...0xFFFD,
             0xE0000...0xE007F:
            out += "\\u{" + hex(u.value, width: u.value < 0x100 ? 2 : 4) + "}"
        default: out.unicodeScalars.append(u)
        }
    }

    private static func hex(_ v: UInt32, width: Int) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// One well-formed UTF-8 scalar at b[i] and its length, nil when the bytes are not one.
    private static func decode(_ b: [UInt8], at i: Int) -> (Unicode.Scalar, Int)? {
        let b0 = b[i]
        if b0 < 0x80 { return (Unicode.Scalar(b0), 1) }
        let n = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC2 ? 2 : 0
        guard n > 0, b0 < 0xF5, i + n <= b.count else { return nil }
        var v = UInt32(b0) & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07)
        for k in 1..<n {
            guard b[i + k] & 0xC0 == 0x80 else { return nil }
            v = v << 6 | UInt32(b[i + k] & 0x3F)
        }
        // Overlong forms and surrogates are not well-formed.
        guard v >= (n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000), let u = Unicode.Scalar(v) else { return nil }
        return (u, n)
    }
}
