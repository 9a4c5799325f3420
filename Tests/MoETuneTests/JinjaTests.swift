import Foundation
import XCTest
@testable import MoETune

/// The Jinja interpreter and chat renderer against jinja2 as transformers configures it:
/// fixtures written by scripts/make_template_fixtures.py.
final class JinjaTests: XCTestCase {
    static func fixture(_ name: String) throws -> JinjaValue {
        let path = Fixtures.dir("templates/" + name)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try JinjaValue.fromJSON(text)
    }

    static func realTemplate(_ name: String) throws -> String {
        try String(contentsOfFile: Fixtures.dir("templates/real/\(name).jinja"), encoding: .utf8)
    }

    /// "" when equal, else where and how the two texts first differ.
    static func difference(_ got: String, _ want: String) -> String {
        let g = Array(got.utf8), w = Array(want.utf8)
        if g == w { return "" }
        var i = 0
        while i < g.count, i < w.count, g[i] == w[i] { i += 1 }
        func around(_ b: [UInt8]) -> String {
            let lo = max(0, i - 40), hi = min(b.count, i + 40)
            return String(decoding: b[lo..<hi], as: UTF8.self).debugDescription
        }
        return "first difference at byte \(i) (lengths \(g.count) vs \(w.count)): got \(around(g)) want \(around(w))"
    }

    func testSyntheticFeatures() throws {
        guard case let .list(cases) = try Self.fixture("synthetic.json") else { return XCTFail("bad fixture") }
        var failures: [String] = []
        for c in cases {
            guard case let .dict(d) = c, case let .string(name)? = d["name"], case let .string(source)? = d["template"],
                  case let .dict(ctx)? = d["context"] else { XCTFail("bad case"); continue }
            var context: [String: JinjaValue] = [:]
            for (k, v) in ctx.pairs { context[k.str] = v }
            do {
                let out = try JinjaTemplate(source).render(context).text
                if case let .string(want)? = d["expected"] {
                    let diff = Self.difference(out, want)
                    if !diff.isEmpty { failures.append("\(name): \(diff)") }
                } else {
                    failures.append("\(name): rendered \(out.debugDescription) but jinja2 raises \(d["error"]?.str ?? "")")
                }
            } catch {
                if d["expected"] != nil { failures.append("\(name): \(error)") }
                else if "\(error)".contains("\n") { failures.append("\(name): error is not one line") }
            }
        }
        XCTAssert(failures.isEmpty, "\(failures.count) of \(cases.count) differ:\n" + failures.joined(separator: "\n"))
    }

    func testRealTemplatesRenderLikeTransformers() throws {
        guard case let .list(templates) = try Self.fixture("real.json") else { return XCTFail("bad fixture") }
        var failures: [String] = []
        var total = 0
        for t in templates {
            guard case let .dict(td) = t, case let .string(name)? = td["name"], case let .dict(tokens)? = td["special_tokens"],
                  case let .list(chats)? = td["chats"] else { XCTFail("bad template entry"); continue }
            var special: [String: String] = [:]
            for (k, v) in tokens.pairs { special[k.str] = v.str }
            let renderer: ChatTemplateRenderer
            do {
                renderer = try ChatTemplateRenderer(template: try Self.realTemplate(name), specialTokens: special)
            } catch {
                failures.append("\(name): \(error)"); continue
            }
            for (index, chat) in chats.enumerated() {
                guard case let .dict(c) = chat, case let .list(ms)? = c["messages"], case let .dict(kw)? = c["kwargs"] else { continue }
                total += 1
                var kwargs: [String: JinjaValue] = ["date_string": .string("26 Jul 2024")]
                for (k, v) in kw.pairs { kwargs[k.str] = v }
                let label = "\(name) chat \(index) (\(c["chat"]?.str ?? ""), add_generation_prompt=\(c["add_generation_prompt"]?.truthy ?? false), \(kw.pairs.map { "\($0.0.str)=\($0.1.str)" }.joined(separator: ",")))"
                do {
                    let messages = try ms.map { try ChatMessage($0) }
                    let out = try renderer.render(messages, addGenerationPrompt: c["add_generation_prompt"]?.truthy ?? false,
                                                  kwargs: kwargs, tools: c["tools"] ?? .none)
                    if case let .string(want)? = c["expected"] {
                        let diff = Self.difference(out, want)
                        if !diff.isEmpty { failures.append("\(label): \(diff)") }
                    } else {
                        failures.append("\(label): rendered but jinja2 raises \(c["error"]?.str ?? "")")
                    }
                } catch {
                    if c["expected"] != nil { failures.append("\(label): \(error)") }
                }
            }
        }
        XCTAssertGreaterThan(total, 300)
        print("real templates: \(templates.count) templates, \(total) chats compared")
        XCTAssert(failures.isEmpty, "\(failures.count) of \(total) chats differ:\n" + failures.joined(separator: "\n"))
    }
}
