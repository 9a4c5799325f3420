import Foundation
import MoEFormats

/// A parsed Jinja template, rendered as transformers renders chat templates: jinja2's
/// ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loop controls, the
/// `{% generation %}` tag, `raise_exception`, `strftime_now` and transformers' `tojson`.
///
/// Errors are `MoETuneError.invalid("chat template line N: …")`, one line each; a construct the
/// interpreter lacks is refused when parsing.
public struct JinjaTemplate {
    /// What one render produced: the text, and the UTF-8 byte ranges that `{% generation %}`
    /// blocks wrote (in order).
    public struct Rendered: Equatable {
        public let text: String
        public let generationSpans: [Range<Int>]
    }

    package let nodes: [JinjaNode]
    package let frame: JinjaFrame
    /// Whether the template has a `{% generation %}` block (transformers' assistant mask).
    public let hasGenerationBlocks: Bool

    public init(_ source: String) throws {
        do {
            nodes = try JinjaParser.parse(source)
            frame = JinjaFrame(nodes)
        } catch let e as JinjaError {
            throw MoETuneError.invalid(e.description)
        }
        hasGenerationBlocks = source.range(of: #"\{%-?\s*generation\s*-?%\}"#, options: .regularExpression) != nil
    }

    /// Renders with `context` as the template's variables. `now` is what `strftime_now` reads.
    public func render(_ context: [String: JinjaValue], now: @escaping () -> Date = Date.init) throws -> Rendered {
        let evaluator = JinjaEvaluator(globals: JinjaBuiltins.globals(now: now))
        let scope = JinjaScope(frame, parent: nil)
        for (k, v) in context where scope.variables[k] == nil { scope.variables[k] = v }
        do {
            _ = try JinjaBudget.$current.withValue(JinjaBudget()) { try evaluator.run(nodes, scope: scope) }
        } catch let e as JinjaError {
            throw MoETuneError.invalid(e.description)
        }
        return Rendered(text: evaluator.output, generationSpans: evaluator.generationSpans)
    }
}

extension JinjaValue {
    /// A template value from JSON text (objects keep their key order).
    public static func fromJSON(_ text: String) throws -> JinjaValue { try JinjaJSON.parse(text) }

    /// A template value from what JSONSerialization returns. Objects lose their key order (keys
    /// are sorted) and a float with an integral value may come back as an int (3.0 → 3): use
    /// `fromJSON` on the JSON text where that matters (tool schemas and tool-call arguments,
    /// which templates print with `tojson`).
    public static func from(any value: Any?) -> JinjaValue {
        switch value {
        case nil, is NSNull: return .none
        case let s as String: return .string(s)
        case let n as NSNumber:
            if String(cString: n.objCType) == "c" { return .bool(n.boolValue) }
            if let i = value as? Int, Double(i) == n.doubleValue, !"\(n)".contains(".") { return .int(i) }
            return .float(n.doubleValue)
        case let a as [Any]: return .list(a.map { from(any: $0) })
        case let d as [String: Any]:
            return .dict(JinjaDict(d.keys.sorted().map { ($0, from(any: d[$0])) }))
        default: return .string("\(value!)")
        }
    }
}
