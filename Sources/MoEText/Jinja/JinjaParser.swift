import MoEFormats
/// The syntax tree of a template and the parser that builds it from the lexer's pieces, with
/// jinja2's grammar and operator precedence. Constructs outside what chat templates use are
/// refused here, naming the construct and the line.
package indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String, line: Int)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String, line: Int)
    case item(JinjaExpr, JinjaExpr, line: Int)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?, line: Int)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)], line: Int)
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)], line: Int)
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool, line: Int)
    case not(JinjaExpr)
    case negate(JinjaExpr, plus: Bool, line: Int)
    case binary(String, JinjaExpr, JinjaExpr, line: Int)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case compare(JinjaExpr, [(String, JinjaExpr)], line: Int)
    case conditional(test: JinjaExpr, then: JinjaExpr, otherwise: JinjaExpr?)
    /// The body of a `{% filter %}` or `{% set x | f %}` block, which its filters apply to.
    case blockInput
}

package indirect enum JinjaTarget {
    case name(String)
    case tuple([JinjaTarget])
    case attribute(String, String)
}

package indirect enum JinjaNode {
    case text(String)
    case output(JinjaExpr, line: Int)
    case conditional([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    case loop(target: JinjaTarget, iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], line: Int,
              bodyFrame: JinjaFrame, elseFrame: JinjaFrame)
    case set(JinjaTarget, JinjaExpr, line: Int)
    case setBlock(JinjaTarget, filter: JinjaExpr?, body: [JinjaNode], line: Int, frame: JinjaFrame)
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode], line: Int, frame: JinjaFrame)
    case callBlock(call: JinjaExpr, parameters: [(String, JinjaExpr?)], body: [JinjaNode], line: Int, frame: JinjaFrame)
    case filterBlock(JinjaExpr, body: [JinjaNode], line: Int)
    case with([(JinjaTarget, JinjaExpr)], body: [JinjaNode], frame: JinjaFrame)
    case generation(body: [JinjaNode], frame: JinjaFrame)
    case breakLoop(line: Int)
    case continueLoop(line: Int)
}

/// The tokens of one tag, read front to back.
package struct JinjaTokenStream {
    package let tokens: [JinjaToken]
    package let line: Int
    package var i = 0

    package var current: JinjaToken? { i < tokens.count ? tokens[i] : nil }
    package var atEnd: Bool { i >= tokens.count }
    package func peek(_ k: Int = 1) -> JinjaToken? { i + k < tokens.count ? tokens[i + k] : nil }
    package var currentLine: Int { current?.line ?? tokens.last?.line ?? line }

    package mutating func skipOp(_ o: String) -> Bool {
        if current?.isOp(o) == true { i += 1; return true }
        return false
    }
    package mutating func skipName(_ n: String) -> Bool {
        if current?.isName(n) == true { i += 1; return true }
        return false
    }
    package mutating func expectOp(_ o: String) throws {
        guard skipOp(o) else { throw fail("expected '\(o)'") }
    }
    package mutating func expectName() throws -> String {
        guard let n = current?.name else { throw fail("expected a name") }
        i += 1
        return n
    }
    package func fail(_ message: String) -> JinjaError {
        let got: String
        switch current?.kind {
        case nil: got = "end of tag"
        case let .name(n)?: got = "'\(n)'"
        case let .op(o)?: got = "'\(o)'"
        case let .string(s)?: got = JinjaValue.pythonRepr(s)
        case let .int(v)?: got = String(v)
        case let .float(v)?: got = JinjaValue.pythonFloat(v)
        }
        return JinjaError(line: currentLine, message: "\(message), got \(got)")
    }
}

package struct JinjaParser {
    private let chunks: [JinjaChunk]
    private var index = 0
    private var depth = 0
    package static let maxDepth = 200

    /// jinja2 fails at compile time on an unknown filter or test, except in a "soft" frame:
    /// the condition and body of an `if` and a whole `x if c else y`, not the frames opened
    /// inside them (for, macro, set block …). There the error waits for the filter or test to
    /// run ("No filter named 'x' found."). Unknown names seen outside soft frames are pending
    /// here until the tag or expression ends and are thrown then.
    private final class Soft {
        var on = false
        var pending: [JinjaError] = []
    }
    private let soft = Soft()

    /// Runs `body` with the soft flag set to `on`, restoring it after.
    private mutating func withSoft<T>(_ on: Bool, _ body: (inout JinjaParser) throws -> T) rethrows -> T {
        let was = soft.on
        soft.on = on
        defer { soft.on = was }
        return try body(&self)
    }

    private func unknown(_ error: JinjaError) {
        if !soft.on { soft.pending.append(error) }
    }

    private func throwPending() throws {
        if let e = soft.pending.first { throw e }
    }

    package init(chunks: [JinjaChunk]) { self.chunks = chunks }

    package static func parse(_ template: String) throws -> [JinjaNode] {
        var lexer = JinjaLexer(template)
        var parser = JinjaParser(chunks: try lexer.chunks())
        let (nodes, end) = try parser.parseBody(until: [])
        if let end { throw JinjaError(line: end.line, message: "unexpected '\(end.tokens.first?.name ?? "")'") }
        return nodes
    }

    package static let unsupportedTags: Set<String> = [
        "include", "import", "from", "extends", "block", "endblock", "do", "trans", "endtrans",
        "pluralize", "autoescape", "endautoescape", "debug",
    ]

    /// Nodes up to a tag named in `until` (returned with its stream positioned after the name),
    /// or to the end of the template (nil).
    private mutating func parseBody(until: Set<String>) throws -> ([JinjaNode], JinjaTokenStream?) {
        depth += 1
        defer { depth -= 1 }
        if depth > JinjaParser.maxDepth { throw JinjaError(line: 0, message: "blocks nested too deeply") }
        var nodes: [JinjaNode] = []
        while index < chunks.count {
            let chunk = chunks[index]
            index += 1
            switch chunk {
            case let .text(s):
                nodes.append(.text(s))
            case let .output(tokens, line):
                var s = JinjaTokenStream(tokens: tokens, line: line)
                if s.atEnd { throw JinjaError(line: line, message: "empty expression") }
                let e = try parseTuple(&s)
                guard s.atEnd else { throw s.fail("expected end of expression") }
                try throwPending()
                nodes.append(.output(e, line: line))
            case let .statement(tokens, line):
                var s = JinjaTokenStream(tokens: tokens, line: line)
                guard let tag = s.current?.name else { throw JinjaError(line: line, message: "a tag must start with its name") }
                if until.contains(tag) {
                    s.i += 1
                    return (nodes, s)
                }
                s.i += 1
                nodes.append(try parseStatement(tag, &s, line: line))
                try throwPending()
            }
        }
        return (nodes, nil)
    }

    private mutating func body(until: Set<String>, openedBy tag: String, line: Int) throws -> ([JinjaNode], String, JinjaTokenStream) {
        // An if's branches are soft frames, the bodies of the other blocks are not.
        let (nodes, end) = try withSoft(tag == "if") { p in try p.parseBody(until: until) }
        guard let end, let name = end.tokens.first?.name else {
            throw JinjaError(line: line, message: "the '\(tag)' tag is never closed (expected \(until.sorted().map { "'\($0)'" }.joined(separator: " or ")))")
        }
        return (nodes, name, end)
    }

    private func endOfTag(_ s: JinjaTokenStream) throws {
        guard s.atEnd else { throw s.fail("expected end of tag") }
    }

    private mutating func parseStatement(_ tag: String, _ s: inout JinjaTokenStream, line: Int) throws -> JinjaNode {
        switch tag {
        case "if":
            return try parseIf(&s, line: line)
        case "for":
            return try parseFor(&s, line: line)
        case "set":
            return try parseSet(&s, line: line)
        case "macro":
            let name = try s.expectName()
            let params = try parseSignature(&s)
            try endOfTag(s)
            let (nodes, _, es) = try body(until: ["endmacro"], openedBy: "macro", line: line)
            try endOfTag(es)
            return .macro(name: name, parameters: params, body: nodes, line: line,
                          frame: JinjaFrame(nodes, assigned: params.map(\.0) + ["caller", "varargs", "kwargs"], reads: params.compactMap(\.1)))
        case "call":
            var params: [(String, JinjaExpr?)] = []
            if s.current?.isOp("(") == true { params = try parseSignature(&s) }
            let call = try parseExpression(&s)
            guard case .call = call else { throw JinjaError(line: line, message: "expected a macro call after 'call'") }
            try endOfTag(s)
            let (nodes, _, es) = try body(until: ["endcall"], openedBy: "call", line: line)
            try endOfTag(es)
            return .callBlock(call: call, parameters: params, body: nodes, line: line,
                              frame: JinjaFrame(nodes, assigned: params.map(\.0) + ["caller", "varargs", "kwargs"], reads: params.compactMap(\.1)))
        case "filter":
            let f = try parseFilters(.blockInput, &s, first: true)
            try endOfTag(s)
            let (nodes, _, es) = try body(until: ["endfilter"], openedBy: "filter", line: line)
            try endOfTag(es)
            return .filterBlock(f, body: nodes, line: line)
        case "with":
            var assignments: [(JinjaTarget, JinjaExpr)] = []
            while !s.atEnd {
                if !assignments.isEmpty { try s.expectOp(",") }
                let t = try parseTarget(&s, allowAttribute: false)
                try s.expectOp("=")
                assignments.append((t, try parseExpression(&s)))
            }
            let (nodes, _, es) = try body(until: ["endwith"], openedBy: "with", line: line)
            try endOfTag(es)
            return .with(assignments, body: nodes, frame: JinjaFrame(nodes, assigned: assignments.flatMap { JinjaFrame.assignedNames($0.0) }))
        case "generation":
            try endOfTag(s)
            let (nodes, _, es) = try body(until: ["endgeneration"], openedBy: "generation", line: line)
            try endOfTag(es)
            return .generation(body: nodes, frame: JinjaFrame(nodes))
        case "break":
            try endOfTag(s)
            return .breakLoop(line: line)
        case "continue":
            try endOfTag(s)
            return .continueLoop(line: line)
        default:
            if JinjaParser.unsupportedTags.contains(tag) {
                throw JinjaError(line: line, message: "the '\(tag)' tag is not supported")
            }
            if tag.hasPrefix("end") || tag == "else" || tag == "elif" {
                throw JinjaError(line: line, message: "unexpected '\(tag)'")
            }
            throw JinjaError(line: line, message: "unknown tag '\(tag)'")
        }
    }

    /// {% if %} ... {% elif %} ... {% else %} ... {% endif %}
    private mutating func parseIf(_ s: inout JinjaTokenStream, line: Int) throws -> JinjaNode {
        var branches: [(JinjaExpr, [JinjaNode])] = []
        var cond = try withSoft(true) { p in try p.parseExpression(&s) }
        try endOfTag(s)
        while true {
            let (nodes, end, endStream) = try body(until: ["elif", "else", "endif"], openedBy: "if", line: line)
            var es = endStream
            branches.append((cond, nodes))
            if end == "elif" {
                cond = try withSoft(true) { p in try p.parseExpression(&es) }
                try endOfTag(es)
                continue
            }
            try endOfTag(es)
            if end == "else" {
                let (other, _, last) = try body(until: ["endif"], openedBy: "if", line: line)
                try endOfTag(last)
                return .conditional(branches, otherwise: other)
            }
            return .conditional(branches, otherwise: [])
        }
    }

    /// {% for target in iterable [if condition] %} ... [{% else %} ...] {% endfor %}
    private mutating func parseFor(_ s: inout JinjaTokenStream, line: Int) throws -> JinjaNode {
        let target = try parseTarget(&s, allowAttribute: false)
        guard s.skipName("in") else { throw s.fail("expected 'in'") }
        let iterable = try parseTuple(&s, withConditional: false)
        var condition: JinjaExpr?
        if s.skipName("if") { condition = try parseExpression(&s) }
        if s.current?.isName("recursive") == true {
            throw JinjaError(line: line, message: "recursive for loops are not supported")
        }
        try endOfTag(s)
        let (nodes, end, es) = try body(until: ["else", "endfor"], openedBy: "for", line: line)
        try endOfTag(es)
        var other: [JinjaNode] = []
        if end == "else" {
            let (o, _, last) = try body(until: ["endfor"], openedBy: "for", line: line)
            try endOfTag(last)
            other = o
        }
        return .loop(target: target, iterable: iterable, condition: condition, body: nodes, otherwise: other, line: line,
                     bodyFrame: JinjaFrame(nodes, assigned: JinjaFrame.assignedNames(target) + ["loop"], reads: condition.map { [$0] } ?? []),
                     elseFrame: JinjaFrame(other))
    }

    /// {% set target = value %}, or the block form {% set target [| filters] %} ... {% endset %}
    private mutating func parseSet(_ s: inout JinjaTokenStream, line: Int) throws -> JinjaNode {
        let target = try parseTarget(&s, allowAttribute: true)
        if s.skipOp("=") {
            let value = try parseTuple(&s)
            try endOfTag(s)
            return .set(target, value, line: line)
        }
        var filter: JinjaExpr?
        if s.current?.isOp("|") == true { filter = try parseFilters(.blockInput, &s) }
        try endOfTag(s)
        let (nodes, _, es) = try body(until: ["endset"], openedBy: "set", line: line)
        try endOfTag(es)
        return .setBlock(target, filter: filter, body: nodes, line: line, frame: JinjaFrame(nodes))
    }

    private func parseSignature(_ s: inout JinjaTokenStream) throws -> [(String, JinjaExpr?)] {
        try s.expectOp("(")
        var params: [(String, JinjaExpr?)] = []
        while !s.skipOp(")") {
            if !params.isEmpty { try s.expectOp(",") }
            if s.skipOp(")") { break }
            let name = try s.expectName()
            if s.skipOp("=") { params.append((name, try parseExpression(&s))) } else {
                if params.last?.1 != nil { throw s.fail("a parameter without default after one with a default") }
                params.append((name, nil))
            }
        }
        return params
    }

    private func parseTarget(_ s: inout JinjaTokenStream, allowAttribute: Bool) throws -> JinjaTarget {
        var items: [JinjaTarget] = []
        var sawComma = false
        repeat {
            if s.atEnd || s.current?.isName("in") == true || s.current?.isOp("=") == true { break }
            if s.skipOp("(") {
                items.append(try parseTarget(&s, allowAttribute: false))
                try s.expectOp(")")
            } else {
                let name = try s.expectName()
                if allowAttribute, s.skipOp(".") {
                    items.append(.attribute(name, try s.expectName()))
                } else {
                    items.append(.name(name))
                }
            }
            sawComma = s.skipOp(",")
        } while sawComma
        guard !items.isEmpty else { throw s.fail("expected an assignment target") }
        return items.count == 1 && !sawComma ? items[0] : .tuple(items)
    }

    // MARK: expressions

    private func parseTuple(_ s: inout JinjaTokenStream, withConditional: Bool = true) throws -> JinjaExpr {
        var items: [JinjaExpr] = []
        var comma = false
        while true {
            if !items.isEmpty {
                guard s.skipOp(",") else { break }
                comma = true
                if s.atEnd || s.current?.isOp(")") == true || s.current?.isName("if") == true { break }
            }
            items.append(withConditional ? try parseExpression(&s) : try parseOr(&s))
        }
        return items.count == 1 && !comma ? items[0] : .tuple(items)
    }

    private func guardDepth(_ s: JinjaTokenStream, _ d: Int) throws {
        if d > JinjaParser.maxDepth { throw JinjaError(line: s.currentLine, message: "expression nested too deeply") }
    }

    package func parseExpression(_ s: inout JinjaTokenStream, depth d: Int = 0) throws -> JinjaExpr {
        try guardDepth(s, d)
        let mark = soft.pending.count
        var e = try parseOr(&s, d)
        var n = 0
        let was = soft.on
        defer { soft.on = was }
        while s.skipName("if") {
            // The whole conditional expression, its first part included, is a soft frame.
            if soft.pending.count > mark { soft.pending.removeSubrange(mark...) }
            soft.on = true
            n += 1
            try guardDepth(s, d + n)
            let cond = try parseOr(&s, d)
            var other: JinjaExpr?
            if s.skipName("else") { other = try parseExpression(&s, depth: d + 1) }
            e = .conditional(test: cond, then: e, otherwise: other)
        }
        return e
    }

    private func parseOr(_ s: inout JinjaTokenStream, _ d: Int = 0) throws -> JinjaExpr {
        var e = try parseAnd(&s, d)
        var n = 0
        while s.skipName("or") { n += 1; try guardDepth(s, d + n); e = .or(e, try parseAnd(&s, d)) }
        return e
    }

    private func parseAnd(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = try parseNot(&s, d)
        var n = 0
        while s.skipName("and") { n += 1; try guardDepth(s, d + n); e = .and(e, try parseNot(&s, d)) }
        return e
    }

    private func parseNot(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        try guardDepth(s, d)
        if s.skipName("not") { return .not(try parseNot(&s, d + 1)) }
        return try parseCompare(&s, d)
    }

    private func parseCompare(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        let line = s.currentLine
        let first = try parseMath1(&s, d)
        var ops: [(String, JinjaExpr)] = []
        while let t = s.current {
            try guardDepth(s, d + ops.count)
            if case let .op(o) = t.kind, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                s.i += 1
                ops.append((o, try parseMath1(&s, d)))
            } else if t.isName("in") {
                s.i += 1
                ops.append(("in", try parseMath1(&s, d)))
            } else if t.isName("not"), s.peek()?.isName("in") == true {
                s.i += 2
                ops.append(("notin", try parseMath1(&s, d)))
            } else { break }
        }
        return ops.isEmpty ? first : .compare(first, ops, line: line)
    }

    private func parseMath1(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = try parseConcat(&s, d)
        var n = 0
        while let t = s.current, t.isOp("+") || t.isOp("-") {
            s.i += 1
            n += 1; try guardDepth(s, d + n)
            e = .binary(t.isOp("+") ? "+" : "-", e, try parseConcat(&s, d), line: t.line)
        }
        return e
    }

    private func parseConcat(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = try parseMath2(&s, d)
        var n = 0
        while let t = s.current, t.isOp("~") {
            s.i += 1
            n += 1; try guardDepth(s, d + n)
            e = .binary("~", e, try parseMath2(&s, d), line: t.line)
        }
        return e
    }

    private func parseMath2(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = try parsePow(&s, d)
        var n = 0
        while let t = s.current, case let .op(o) = t.kind, ["*", "/", "//", "%"].contains(o) {
            s.i += 1
            n += 1; try guardDepth(s, d + n)
            e = .binary(o, e, try parsePow(&s, d), line: t.line)
        }
        return e
    }

    private func parsePow(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = try parseUnary(&s, d, withFilter: true)
        var n = 0
        while let t = s.current, t.isOp("**") {
            s.i += 1
            n += 1; try guardDepth(s, d + n)
            e = .binary("**", e, try parseUnary(&s, d, withFilter: true), line: t.line)
        }
        return e
    }

    private func parseUnary(_ s: inout JinjaTokenStream, _ d: Int, withFilter: Bool) throws -> JinjaExpr {
        try guardDepth(s, d)
        var e: JinjaExpr
        if let t = s.current, t.isOp("-") || t.isOp("+") {
            s.i += 1
            e = .negate(try parseUnary(&s, d + 1, withFilter: false), plus: t.isOp("+"), line: t.line)
        } else {
            e = try parsePrimary(&s, d)
        }
        e = try parsePostfix(e, &s, d)
        if withFilter { e = try parseFilterExpr(e, &s, d) }
        return e
    }

    private func parsePrimary(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        guard let t = s.current else { throw s.fail("expected an expression") }
        switch t.kind {
        case let .name(n):
            s.i += 1
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n, line: t.line)
            }
        case var .string(v):
            s.i += 1
            while case let .string(more)? = s.current?.kind { v += more; s.i += 1 }
            return .literal(.string(v))
        case let .int(v): s.i += 1; return .literal(.int(v))
        case let .float(v): s.i += 1; return .literal(.float(v))
        case let .op(o):
            switch o {
            case "(":
                s.i += 1
                if s.skipOp(")") { return .tuple([]) }
                let e = try parseTupleNested(&s, d + 1)
                try s.expectOp(")")
                return e
            case "[":
                s.i += 1
                var items: [JinjaExpr] = []
                while !s.skipOp("]") {
                    if !items.isEmpty { try s.expectOp(","); if s.skipOp("]") { break } }
                    items.append(try parseExpression(&s, depth: d + 1))
                }
                return .list(items)
            case "{":
                s.i += 1
                var items: [(JinjaExpr, JinjaExpr)] = []
                while !s.skipOp("}") {
                    if !items.isEmpty { try s.expectOp(","); if s.skipOp("}") { break } }
                    let k = try parseExpression(&s, depth: d + 1)
                    try s.expectOp(":")
                    items.append((k, try parseExpression(&s, depth: d + 1)))
                }
                return .dict(items)
            default:
                throw s.fail("unexpected operator")
            }
        }
    }

    private func parseTupleNested(_ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        try guardDepth(s, d)
        var items: [JinjaExpr] = []
        var comma = false
        while true {
            if !items.isEmpty {
                guard s.skipOp(",") else { break }
                comma = true
                if s.current?.isOp(")") == true { break }
            }
            items.append(try parseExpression(&s, depth: d))
        }
        return items.count == 1 && !comma ? items[0] : .tuple(items)
    }

    private func parsePostfix(_ e0: JinjaExpr, _ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = e0
        var n = 0
        while let t = s.current {
            n += 1
            try guardDepth(s, d + n)
            if t.isOp(".") {
                s.i += 1
                guard let next = s.current else { throw s.fail("expected an attribute name") }
                s.i += 1
                switch next.kind {
                case let .name(n): e = .attribute(e, n, line: t.line)
                case let .int(v): e = .item(e, .literal(.int(v)), line: t.line)
                default: s.i -= 1; throw s.fail("expected an attribute name")
                }
            } else if t.isOp("[") {
                s.i += 1
                e = try parseSubscript(e, &s, d, line: t.line)
            } else if t.isOp("(") {
                e = try parseCall(e, &s, d)
            } else { break }
        }
        return e
    }

    private func parseSubscript(_ e: JinjaExpr, _ s: inout JinjaTokenStream, _ d: Int, line: Int) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = []
        var current: JinjaExpr?
        var isSlice = false
        while true {
            if s.skipOp("]") { parts.append(current); break }
            if s.skipOp(":") {
                parts.append(current); current = nil; isSlice = true
                if parts.count > 2 { throw s.fail("too many ':' in a slice") }
                continue
            }
            if current != nil { throw s.fail("expected ']'") }
            current = try parseExpression(&s, depth: d + 1)
        }
        if !isSlice {
            guard let index = parts[0] else { throw s.fail("expected a subscript") }
            return .item(e, index, line: line)
        }
        while parts.count < 3 { parts.append(nil) }
        return .slice(e, parts[0], parts[1], parts[2], line: line)
    }

    private func parseCall(_ callee: JinjaExpr, _ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        let line = s.currentLine
        let (args, kwargs) = try parseArguments(&s, d)
        return .call(callee, args, kwargs, line: line)
    }

    private func parseArguments(_ s: inout JinjaTokenStream, _ d: Int) throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try s.expectOp("(")
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        var first = true
        while !s.skipOp(")") {
            if !first { try s.expectOp(","); if s.skipOp(")") { break } }
            first = false
            if s.current?.isOp("*") == true || s.current?.isOp("**") == true {
                throw JinjaError(line: s.currentLine, message: "*args and **kwargs in calls are not supported")
            }
            if let n = s.current?.name, s.peek()?.isOp("=") == true {
                s.i += 2
                kwargs.append((n, try parseExpression(&s, depth: d + 1)))
            } else {
                if !kwargs.isEmpty { throw s.fail("a positional argument after a keyword argument") }
                args.append(try parseExpression(&s, depth: d + 1))
            }
        }
        return (args, kwargs)
    }

    private func parseFilterExpr(_ e0: JinjaExpr, _ s: inout JinjaTokenStream, _ d: Int) throws -> JinjaExpr {
        var e = e0
        var n = 0
        while let t = s.current {
            n += 1
            try guardDepth(s, d + n)
            if t.isOp("|") {
                e = try parseFilters(e, &s, d: d)
            } else if t.isName("is") {
                s.i += 1
                let negated = s.skipName("not")
                var name = try s.expectName()
                while s.skipOp(".") { name += "." + (try s.expectName()) }
                if !JinjaBuiltins.tests.contains(name) {
                    unknown(JinjaError(line: t.line, message: JinjaBuiltins.knownUnsupportedTests.contains(name)
                        ? "the '\(name)' test is not supported" : "No test named '\(name)'."))
                }
                var args: [JinjaExpr] = []
                if s.current?.isOp("(") == true {
                    let (a, kw) = try parseArguments(&s, d)
                    args = a + kw.map(\.1)
                } else if let c = s.current, !(c.isName("else") || c.isName("or") || c.isName("and") || c.isName("if") || c.isName("not") || c.isName("in") || c.isName("is")) {
                    switch c.kind {
                    case .name, .string, .int, .float: args = [try parsePostfix(try parsePrimary(&s, d + 1), &s, d + 1)]
                    case .op("["), .op("{"): args = [try parsePostfix(try parsePrimary(&s, d + 1), &s, d + 1)]
                    default: break
                    }
                }
                e = .test(e, name, args, negated: negated, line: t.line)
            } else if t.isOp("(") {
                e = try parseCall(e, &s, d)
            } else { break }
        }
        return e
    }

    /// `| name(args) | name …` applied to `e`; `first` means the first `|` is implied.
    private func parseFilters(_ e0: JinjaExpr, _ s: inout JinjaTokenStream, first: Bool = false, d: Int = 0) throws -> JinjaExpr {
        var e = e0
        var implied = first
        var n = 0
        while implied || s.skipOp("|") {
            implied = false
            n += 1
            try guardDepth(s, d + n)
            let line = s.currentLine
            var name = try s.expectName()
            while s.skipOp(".") { name += "." + (try s.expectName()) }
            if !JinjaBuiltins.filters.contains(name) {
                unknown(JinjaError(line: line, message: JinjaBuiltins.knownUnsupportedFilters.contains(name)
                    ? "the '\(name)' filter is not supported" : "No filter named '\(name)'."))
            }
            var args: [JinjaExpr] = []
            var kwargs: [(String, JinjaExpr)] = []
            if s.current?.isOp("(") == true { (args, kwargs) = try parseArguments(&s, d) }
            e = .filter(e, name, args, kwargs, line: line)
        }
        return e
    }
}
