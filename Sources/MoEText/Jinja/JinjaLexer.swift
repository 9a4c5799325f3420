import MoEFormats
/// Splits a template into text, `{{ … }}` and `{% … %}` pieces with jinja2's whitespace rules
/// as transformers configures them (trim_blocks and lstrip_blocks on, trailing newline dropped),
/// and the inside of each tag into tokens.
package struct JinjaToken: Equatable {
    package enum Kind: Equatable { case name(String), string(String), int(Int), float(Double), op(String) }
    package let kind: Kind
    package let line: Int

    package var name: String? { if case let .name(n) = kind { return n } else { return nil } }
    package func isOp(_ o: String) -> Bool { kind == .op(o) }
    package func isName(_ n: String) -> Bool { kind == .name(n) }
}

package enum JinjaChunk {
    case text(String)
    case output([JinjaToken], line: Int)
    case statement([JinjaToken], line: Int)
}

/// A template error: the line in the template (0 when unknown) and a one-line message.
package struct JinjaError: Error, CustomStringConvertible {
    package let line: Int
    package let message: String
    package var description: String { line > 0 ? "chat template line \(line): \(message)" : "chat template: \(message)" }
}

package struct JinjaLexer {
    private let src: [Unicode.Scalar]
    private var pos = 0
    private var lineCountedTo = 0
    private var line = 1

    package init(_ template: String) {
        // jinja2 turns \r\n and \r into \n and drops one trailing newline (keep_trailing_newline off).
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(template.unicodeScalars.count)
        var it = Array(template.unicodeScalars)
        var i = 0
        while i < it.count {
            if it[i] == "\r" {
                scalars.append("\n")
                if i + 1 < it.count, it[i + 1] == "\n" { i += 1 }
            } else { scalars.append(it[i]) }
            i += 1
        }
        if scalars.last == "\n" { scalars.removeLast() }
        it = []
        src = scalars
    }

    package static func isSpace(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x09...0x0d, 0x1c...0x20, 0x85, 0xa0: return true
        default: return u.value > 0x7f && u.properties.isWhitespace
        }
    }

    private mutating func lineAt(_ p: Int) -> Int {
        if p < lineCountedTo { // rare: recount
            lineCountedTo = 0; line = 1
        }
        while lineCountedTo < p && lineCountedTo < src.count {
            if src[lineCountedTo] == "\n" { line += 1 }
            lineCountedTo += 1
        }
        return line
    }

    private func starts(_ s: String, at p: Int) -> Bool {
        var q = p
        for u in s.unicodeScalars {
            guard q < src.count, src[q] == u else { return false }
            q += 1
        }
        return true
    }

    private func string(_ a: Int, _ b: Int) -> String {
        var s = String.UnicodeScalarView()
        s.append(contentsOf: src[a..<b])
        return String(s)
    }

    /// The text before a tag, after `{%-` / lstrip_blocks took what they take.
    private func stripText(_ a: Int, _ b: Int, sign: Unicode.Scalar?, lstrip: Bool, lineStarting: Bool) -> String {
        var end = b
        if sign == "-" {
            while end > a, JinjaLexer.isSpace(src[end - 1]) { end -= 1 }
        } else if sign != "+" && lstrip {
            var l = end
            while l > a, src[l - 1] != "\n" { l -= 1 }
            if (l > a || lineStarting) && l < end && src[l..<end].allSatisfy(JinjaLexer.isSpace) { end = l }
        }
        return string(a, end)
    }

    /// The template's pieces in order: text, `{{ … }}` outputs and `{% … %}` statements
    /// (comments dropped, a `{% raw %}` body as text), with jinja2's whitespace control.
    package mutating func chunks() throws -> [JinjaChunk] {
        var out: [JinjaChunk] = []
        var lineStarting = true
        let n = src.count
        while pos < n {
            guard let i = nextTag(from: pos) else {
                out.append(.text(string(pos, n)))
                break
            }
            let kind = src[i + 1]
            let sign: Unicode.Scalar? = (i + 2 < n && (src[i + 2] == "-" || src[i + 2] == "+")) ? src[i + 2] : nil
            let p = i + 2 + (sign == nil ? 0 : 1)
            let tagLine = lineAt(i)
            // {% raw %}
            if kind == "%", let afterRaw = rawBegin(p) {
                let text = stripText(pos, i, sign: sign, lstrip: true, lineStarting: lineStarting)
                if !text.isEmpty { out.append(.text(text)) }
                let body = try rawBody(afterRaw, tagLine: tagLine)
                if !body.isEmpty { out.append(.text(body)) }
                lineStarting = pos > 0 && src[pos - 1] == "\n"
                continue
            }
            let text = stripText(pos, i, sign: sign, lstrip: kind != "{", lineStarting: lineStarting)
            if !text.isEmpty { out.append(.text(text)) }
            if kind == "#" {
                pos = try commentEnd(p, tagLine: tagLine)
                lineStarting = pos > 0 && src[pos - 1] == "\n"
                continue
            }
            let isBlock = kind == "%"
            let tokens = try tagTokens(from: p, isBlock: isBlock, tagLine: tagLine)
            lineStarting = pos > 0 && src[pos - 1] == "\n"
            out.append(isBlock ? .statement(tokens, line: tagLine) : .output(tokens, line: tagLine))
        }
        return out
    }

    /// Where the next `{{`, `{%` or `{#` at or after p starts; nil when none.
    package func nextTag(from p: Int) -> Int? {
        let n = src.count
        var i = p
        while i + 1 < n, !(src[i] == "{" && (src[i + 1] == "{" || src[i + 1] == "%" || src[i + 1] == "#")) { i += 1 }
        return i + 1 < n ? i : nil
    }

    /// A raw block's text from `afterRaw` to its `{% endraw %}` (with the end tag's whitespace
    /// control); pos moves past the end tag.
    package mutating func rawBody(_ afterRaw: Int, tagLine: Int) throws -> String {
        var q = afterRaw
        while q + 1 < src.count {
            if src[q] == "{" && src[q + 1] == "%", let end = rawEnd(q + 2) {
                let endSign: Unicode.Scalar? = (src[q + 2] == "-" || src[q + 2] == "+") ? src[q + 2] : nil
                let ls = afterRaw > 0 && src[afterRaw - 1] == "\n"
                pos = end.next
                return stripText(afterRaw, q, sign: endSign, lstrip: true, lineStarting: ls)
            }
            q += 1
        }
        throw JinjaError(line: tagLine, message: "missing end of raw directive")
    }

    /// Where the text after the comment whose inside starts at p resumes.
    package func commentEnd(_ p: Int, tagLine: Int) throws -> Int {
        let n = src.count
        var k = p
        while k + 1 < n, !(src[k] == "#" && src[k + 1] == "}") { k += 1 }
        guard k + 1 < n else { throw JinjaError(line: tagLine, message: "missing end of comment tag") }
        let marker: Unicode.Scalar? = (k - 1 >= p && (src[k - 1] == "-" || src[k - 1] == "+")) ? src[k - 1] : nil
        return afterEnd(k + 2, marker: marker, trim: true)
    }

    /// The tokens of a tag whose inside starts at p, up to its closing `%}` or `}}` (outside
    /// brackets); pos moves past the closing (with its whitespace control).
    package mutating func tagTokens(from p0: Int, isBlock: Bool, tagLine: Int) throws -> [JinjaToken] {
        let n = src.count
        var tokens: [JinjaToken] = []
        var depth = 0
        var p = p0
        while p < n {
            if JinjaLexer.isSpace(src[p]) { p += 1; continue }
            if depth == 0, let next = tagEnd(at: p, isBlock: isBlock) {
                pos = next
                return tokens
            }
            let (token, next) = try token(at: p, line: lineAt(p))
            if token.isOp("(") || token.isOp("[") || token.isOp("{") { depth += 1 }
            if token.isOp(")") || token.isOp("]") || token.isOp("}") { depth -= 1 }
            tokens.append(token)
            p = next
        }
        throw JinjaError(line: tagLine, message: isBlock ? "missing '%}' closing the tag" : "missing '}}' closing the expression")
    }

    /// When a tag's closing (`%}` or `}}`, with its whitespace marker) starts at p: where the
    /// text after it resumes.
    package func tagEnd(at p: Int, isBlock: Bool) -> Int? {
        let u = src[p]
        if isBlock {
            if (u == "-" || u == "+") && starts("%}", at: p + 1) { return afterEnd(p + 3, marker: u, trim: true) }
            if starts("%}", at: p) { return afterEnd(p + 2, marker: nil, trim: true) }
        } else {
            if u == "-" && starts("}}", at: p + 1) { return afterEnd(p + 3, marker: "-", trim: false) }
            if starts("}}", at: p) { return p + 2 }
        }
        return nil
    }

    /// The token starting at p (not a space) and the position after it.
    package func token(at p: Int, line: Int) throws -> (JinjaToken, Int) {
        let u = src[p]
        if u == "'" || u == "\"" { return try stringToken(at: p, line: line) }
        if u.properties.numericType == .decimal && u.isASCII { return try numberToken(at: p, line: line) }
        if u == "_" || u.properties.isAlphabetic {
            var q = p + 1
            while q < src.count, src[q] == "_" || src[q].properties.isAlphabetic || (src[q].properties.numericType == .decimal) { q += 1 }
            return (JinjaToken(kind: .name(string(p, q)), line: line), q)
        }
        var matched: String?
        for op in ["//", "**", "==", "!=", "<=", ">="] where starts(op, at: p) { matched = op; break }
        if matched == nil, "+-/*%~[](){}<>=.:|,;".unicodeScalars.contains(u) { matched = String(u) }
        guard let op = matched else {
            throw JinjaError(line: line, message: "unexpected character '\(u)'")
        }
        return (JinjaToken(kind: .op(op), line: line), p + op.unicodeScalars.count)
    }

    /// A quoted string literal at p (Python escapes decoded).
    package func stringToken(at p: Int, line: Int) throws -> (JinjaToken, Int) {
        let n = src.count, u = src[p]
        var q = p + 1
        var raw: [Unicode.Scalar] = []
        while q < n, src[q] != u {
            if src[q] == "\\", q + 1 < n { raw.append(src[q]); q += 1 }
            raw.append(src[q]); q += 1
        }
        guard q < n else { throw JinjaError(line: line, message: "unterminated string literal") }
        return (JinjaToken(kind: .string(JinjaLexer.unescape(raw)), line: line), q + 1)
    }

    /// An integer or float literal at p (`_` between digits, a fraction, an exponent).
    package func numberToken(at p: Int, line: Int) throws -> (JinjaToken, Int) {
        let n = src.count
        var q = p
        func digits() { while q < n, (src[q].isASCII && src[q].properties.numericType == .decimal) || (src[q] == "_" && q + 1 < n && src[q + 1].isASCII && src[q + 1].properties.numericType == .decimal) { q += 1 } }
        digits()
        var isFloat = false
        if q + 1 < n, src[q] == ".", src[q + 1].isASCII, src[q + 1].properties.numericType == .decimal {
            isFloat = true; q += 1; digits()
        }
        if q < n, src[q] == "e" || src[q] == "E" {
            var r = q + 1
            if r < n, src[r] == "+" || src[r] == "-" { r += 1 }
            if r < n, src[r].isASCII, src[r].properties.numericType == .decimal { isFloat = true; q = r; digits() }
        }
        let text = string(p, q).replacingOccurrences(of: "_", with: "")
        if isFloat {
            guard let d = Double(text) else { throw JinjaError(line: line, message: "bad number \(text)") }
            return (JinjaToken(kind: .float(d), line: line), q)
        }
        guard let v = Int(text) else { throw JinjaError(line: line, message: "integer \(text) is too large") }
        return (JinjaToken(kind: .int(v), line: line), q)
    }

    /// Where the text after a closing tag starts: `-` strips all whitespace, a plain block or
    /// comment end eats one newline (trim_blocks), `+` keeps everything.
    private func afterEnd(_ p: Int, marker: Unicode.Scalar?, trim: Bool) -> Int {
        var q = p
        if marker == "-" {
            while q < src.count, JinjaLexer.isSpace(src[q]) { q += 1 }
        } else if marker == nil && trim && q < src.count && src[q] == "\n" {
            q += 1
        }
        return q
    }

    /// `{%[-+]? raw [-]?%}`: where the raw text starts, or nil when this tag is not `raw`.
    private func rawBegin(_ p0: Int) -> Int? {
        var p = p0
        while p < src.count, JinjaLexer.isSpace(src[p]) { p += 1 }
        guard starts("raw", at: p) else { return nil }
        p += 3
        while p < src.count, JinjaLexer.isSpace(src[p]) { p += 1 }
        if starts("-%}", at: p) { return afterEnd(p + 3, marker: "-", trim: false) }
        if starts("%}", at: p) { return p + 2 }
        return nil
    }

    /// After `{%` at p: `[-+]? endraw [-+]?%}`; the position after it (with trim rules).
    private func rawEnd(_ p0: Int) -> (next: Int, sign: Unicode.Scalar?)? {
        var p = p0
        var sign: Unicode.Scalar?
        if p < src.count, src[p] == "-" || src[p] == "+" { sign = src[p]; p += 1 }
        while p < src.count, JinjaLexer.isSpace(src[p]) { p += 1 }
        guard starts("endraw", at: p) else { return nil }
        p += 6
        while p < src.count, JinjaLexer.isSpace(src[p]) { p += 1 }
        if (starts("-%}", at: p) || starts("+%}", at: p)) { return (afterEnd(p + 3, marker: src[p], trim: true), sign) }
        if starts("%}", at: p) { return (afterEnd(p + 2, marker: nil, trim: true), sign) }
        return nil
    }

    /// Python's `unicode-escape` decoding of a string literal's inside.
    package static func unescape(_ raw: [Unicode.Scalar]) -> String {
        var out = String.UnicodeScalarView()
        var i = 0
        func hex(_ count: Int) -> Unicode.Scalar? {
            guard i + count < raw.count + 0, i + 1 + count <= raw.count else { return nil }
            var v: UInt32 = 0
            for k in 1...count {
                guard let d = Int(String(raw[i + k]), radix: 16) else { return nil }
                v = v * 16 + UInt32(d)
            }
            return Unicode.Scalar(v)
        }
        while i < raw.count {
            let c = raw[i]
            guard c == "\\", i + 1 < raw.count else { out.append(c); i += 1; continue }
            let e = raw[i + 1]
            switch e {
            case "n": out.append("\n"); i += 2
            case "t": out.append("\t"); i += 2
            case "r": out.append("\r"); i += 2
            case "\\": out.append("\\"); i += 2
            case "'": out.append("'"); i += 2
            case "\"": out.append("\""); i += 2
            case "a": out.append("\u{07}"); i += 2
            case "b": out.append("\u{08}"); i += 2
            case "f": out.append("\u{0c}"); i += 2
            case "v": out.append("\u{0b}"); i += 2
            case "\n": i += 2
            case "x", "u", "U":
                let count = e == "x" ? 2 : (e == "u" ? 4 : 8)
                i += 1
                if let s = hex(count) { out.append(s); i += count + 1 } else { out.append("\\"); out.append(e); i += 1 }
            case "0"..."7":
                var v: UInt32 = 0
                var k = i + 1
                while k < raw.count, k < i + 4, let d = Int(String(raw[k]), radix: 8) { v = v * 8 + UInt32(d); k += 1 }
                out.append(Unicode.Scalar(v) ?? "?"); i = k
            default: out.append("\\"); out.append(e); i += 2
            }
        }
        return String(out)
    }
}
