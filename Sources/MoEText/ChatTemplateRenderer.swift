import Foundation
import MoEFormats

/// One chat message as a template sees it: a dict with `role` and `content` and whatever else
/// the data carries (`reasoning_content`, `tool_calls`, `name`, …), in its own key order.
public struct ChatMessage {
    public var fields: JinjaDict

    public init(role: String, content: String?, reasoningContent: String? = nil) {
        var d = JinjaDict()
        d["role"] = .string(role)
        d["content"] = content.map { JinjaValue.string($0) } ?? JinjaValue.none
        if let reasoningContent { d["reasoning_content"] = .string(reasoningContent) }
        fields = d
    }

    /// A message from a JSON object (`JinjaValue.fromJSON`), every field kept.
    public init(_ value: JinjaValue) throws {
        guard case let .dict(d) = value, case .string? = d["role"] else {
            throw MoETuneError.invalid("a chat message must be an object with a string \"role\"")
        }
        fields = d
    }

    /// The messages of a JSON array (`[{"role": …, "content": …}, …]`), every field kept in its order.
    public static func list(fromJSON text: String) throws -> [ChatMessage] {
        guard case let .list(items) = try JinjaValue.fromJSON(text) else {
            throw MoETuneError.invalid("chat messages must be a JSON array")
        }
        return try items.map { try ChatMessage($0) }
    }

    public var role: String { if case let .string(r)? = fields["role"] { return r } else { return "" } }
    public var content: String? { if case let .string(c)? = fields["content"] { return c } else { return nil } }

    /// What the template sees, with the reasoning aliases transformers adds: a message with
    /// reasoning (`reasoning_content`, `thinking` or `reasoning`) gets it under `thinking` (first)
    /// and `reasoning_content` (last).
    package var templateValue: JinjaValue {
        var reasoning: JinjaValue?
        for key in ["reasoning_content", "thinking", "reasoning"] {
            if let v = fields[key], !v.isUndefined, !({ if case .none = v { return true } else { return false } }()) { reasoning = v; break }
        }
        guard let reasoning else { return .dict(fields) }
        var d = JinjaDict()
        d["thinking"] = reasoning
        for (k, v) in fields.pairs { d[k] = v }
        d["reasoning_content"] = reasoning
        return .dict(d)
    }
}

/// Renders chats with a model's Jinja chat template exactly as transformers'
/// `apply_chat_template(messages, tokenize=False, …)` does, and finds the assistant turns in
/// the text (UTF-8 byte ranges) for loss masks.
///
/// Assistant spans come from the template itself:
/// - a template with `{% generation %}` blocks: the ranges those blocks wrote, as they are;
/// - otherwise, for each assistant message i: from the end of P = render(messages[..<i],
///   add_generation_prompt: true) to the end of E = render(messages[...i],
///   add_generation_prompt: false), both checked to be byte prefixes of the full render F (a
///   special token such as eos_token that the template writes only at the very end of a chat
///   is dropped from E when that makes it a prefix: Phi-3);
/// - where a template breaks that, in this order: (1) the turn as E writes it after P is looked
///   for whole in F (Mistral v3 moves the system prompt into the last user turn); (2) the start
///   is where P and F part, and the end comes from rendering the chat with the message's
///   content replaced by a marker, which shows where the content sits in F however the
///   template rewrote it (Qwen3 drops `<think>` blocks of earlier turns; an empty content beside
///   tool calls), followed by the closing text that follows it in E (`<|im_end|>`); (3) the end
///   is the longest text from the start that ends the turn as E writes it; (4) the message's
///   content followed by that closing text is looked for in F. Where P itself cannot be rendered
///   (a template that fails on an empty chat) the turn starts at its content. Failing all, the
///   chat is refused with a message naming the turn (and the template's own error when it fails
///   on the chat up to that turn: Qwen3.5 wants a user message before any assistant one).
/// - Whitespace at the end of each span is cut: a ChatML turn ends at `<|im_end|>` without the
///   newline after it (the model stops at the marker and never generates that newline); Llama
///   3's ends at `<|eot_id|>`. The end-of-turn marker is inside the span, the next header is not.
public struct ChatTemplateRenderer {
    public let template: JinjaTemplate
    public let source: String
    /// bos_token, eos_token, unk_token, pad_token … as tokenizer_config.json names them.
    public var specialTokens: [String: String]
    /// Clock for `strftime_now` (fixed in tests).
    public var now: () -> Date = Date.init

    public init(template source: String, specialTokens: [String: String] = [:]) throws {
        self.source = source
        self.template = try JinjaTemplate(source)
        self.specialTokens = specialTokens
    }

    /// The special tokens of tokenizer_config.json (bos_token, eos_token, ...): each a string
    /// or {"content": string}, or null. Anything else (`"eos_token": 5`) is refused naming the
    /// file and key: taking it as absent dropped EOS from every example.
    package static let specialTokenKeys = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]

    package static func specialTokens(_ config: JinjaDict?, path: String) throws -> [String: String] {
        var tokens: [String: String] = [:]
        for key in specialTokenKeys {
            switch config?[key] {
            case let .string(s)?: tokens[key] = s
            case let .dict(t)? where t["content"].map({ if case .string = $0 { return true } else { return false } }) ?? false:
                if case let .string(s)? = t["content"] { tokens[key] = s }
            case nil, .none?: break
            case let other?:
                throw MoETuneError.file(path: path, message: "\(key): must be a token string or {\"content\": string}, got \(other.typeName) \(Printable.quoted(other.repr))")
            }
        }
        return tokens
    }

    /// The template and special tokens of a model folder: `chat_template.jinja` if present,
    /// else `chat_template` in tokenizer_config.json (a string, or a list of {name, template}
    /// where "default" is used); of a `.gguf` file, `tokenizer.chat_template`. nil when the folder has no template.
    public static func load(modelDirectory dir: String) throws -> ChatTemplateRenderer? {
        if GGUFFile.isGGUFPath(dir) { return try GGUFTokenizer.chatTemplate(path: dir) }
        let configPath = (dir as NSString).appendingPathComponent("tokenizer_config.json")
        var config: JinjaDict?
        if let data = FileManager.default.contents(atPath: configPath) {
            guard let text = String(data: data, encoding: .utf8), case let .dict(d) = try? JinjaJSON.parse(text) else {
                throw MoETuneError.file(path: configPath, message: "not a JSON object")
            }
            config = d
        }
        let tokens = try specialTokens(config, path: configPath)
        var source: String?
        let jinjaPath = (dir as NSString).appendingPathComponent("chat_template.jinja")
        if let data = FileManager.default.contents(atPath: jinjaPath) {
            guard let text = String(data: data, encoding: .utf8) else { throw MoETuneError.file(path: jinjaPath, message: "not UTF-8") }
            source = text
        } else {
            switch config?["chat_template"] {
            case let .string(s)?: source = s
            case let .list(items)?:
                for item in items {
                    if case let .dict(t) = item, case .string("default")? = t["name"], case let .string(s)? = t["template"] { source = s }
                }
                if source == nil { throw MoETuneError.file(path: configPath, message: "chat_template list has no \"default\" entry") }
            case nil, .none?: break
            case let other?:
                // Ignoring it used the built-in format silently: refused like any malformed key.
                throw MoETuneError.file(path: configPath, message: "chat_template: must be a string or a list of {name, template}, got \(other.typeName) \(Printable.quoted(other.repr))")
            }
        }
        guard let source else { return nil }
        do {
            return try ChatTemplateRenderer(template: source, specialTokens: tokens)
        } catch let e as MoETuneError {
            throw MoETuneError.file(path: dir, message: e.description)
        }
    }

    /// The text `apply_chat_template(messages, tokenize=False, add_generation_prompt=…, **kwargs)` gives.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = false,
                       kwargs: [String: JinjaValue] = [:], tools: JinjaValue = .none) throws -> String {
        try renderFull(messages, addGenerationPrompt: addGenerationPrompt, kwargs: kwargs, tools: tools).text
    }

    /// The prompt for generation: the chat (ending with a user turn) and the assistant header.
    public func generationPrompt(_ messages: [ChatMessage], kwargs: [String: JinjaValue] = [:],
                                 tools: JinjaValue = .none) throws -> String {
        try render(messages, addGenerationPrompt: true, kwargs: kwargs, tools: tools)
    }

    package func renderFull(_ messages: [ChatMessage], addGenerationPrompt: Bool, kwargs: [String: JinjaValue],
                    tools: JinjaValue = .none) throws -> JinjaTemplate.Rendered {
        var context: [String: JinjaValue] = [:]
        for (k, v) in specialTokens { context[k] = .string(v) }
        for (k, v) in kwargs { context[k] = v }
        context["messages"] = .list(messages.map(\.templateValue))
        context["tools"] = tools
        context["documents"] = context["documents"] ?? JinjaValue.none
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        return try template.render(context, now: now)
    }

    /// The full chat (add_generation_prompt off) and the byte ranges of its assistant turns.
    public func renderWithAssistantSpans(_ messages: [ChatMessage], kwargs: [String: JinjaValue] = [:],
                                         tools: JinjaValue = .none) throws -> (text: String, assistantSpans: [Range<Int>]) {
        let full = try renderFull(messages, addGenerationPrompt: false, kwargs: kwargs, tools: tools)
        if template.hasGenerationBlocks {
            return (full.text, full.generationSpans.filter { !$0.isEmpty })
        }
        let f = Array(full.text.utf8)
        var spans: [Range<Int>] = []
        var cursor = 0
        for (i, m) in messages.enumerated() where m.role == "assistant" {
            let prefix = try? Array(renderFull(Array(messages[..<i]), addGenerationPrompt: true, kwargs: kwargs, tools: tools).text.utf8)
            var throughError: Error?
            var through: [UInt8]?
            do {
                through = Array(try renderFull(Array(messages[...i]), addGenerationPrompt: false, kwargs: kwargs, tools: tools).text.utf8)
            } catch { throughError = error }
            var start = cursor
            if let prefix { start = max(cursor, ChatTemplateRenderer.commonPrefix(prefix, f)) }
            var end: Int?
            let prefixHolds = prefix.map { $0.count <= f.count && f[..<$0.count].elementsEqual($0) } ?? false
            if prefixHolds, let through, let n = closedTurn(through, within: f), n > start {
                end = n
            } else if let (a, b) = locateTurn(prefix: prefix, through: through, in: f, from: cursor) {
                start = a
                end = b
            } else if let (contentStart, e) = markedEnd(messages, i, full: f, from: cursor, kwargs: kwargs, tools: tools) {
                // Without a prefix render the turn starts at its content; so it does where the
                // prefix render is not a prefix of the chat up to the turn while that chat is one
                // of the full render (Mistral Nemo writes the system prompt into the last user
                // turn only when it is the last message, so P has it and F does not).
                let movedPrefix = prefix.map { p in through.map { t in !(p.count <= t.count && t[..<p.count].elementsEqual(p)) && closedTurn(t, within: f) != nil } ?? false } ?? false
                start = prefix == nil || movedPrefix ? max(cursor, contentStart) : max(cursor, min(start, contentStart))
                end = e
            } else if let e = suffixAligned(through: through, full: f, start: start) {
                end = e
            } else {
                end = ChatTemplateRenderer.locateEnd(of: m, in: f, from: start, through: through)
            }
            guard var e = end, e > start else {
                if let throughError {
                    throw MoETuneError.invalid("cannot find assistant message \(i + 1) in the rendered chat: the template fails on the chat up to it (\(throughError))")
                }
                throw MoETuneError.invalid("chat template: cannot find assistant message \(i + 1) in the rendered chat (the template changes it)")
            }
            while e > start, f[e - 1] < 0x80, JinjaLexer.isSpace(Unicode.Scalar(f[e - 1])) { e -= 1 }
            spans.append(start..<e)
            cursor = e
        }
        return (full.text, spans)
    }

    /// The length of `through` when it is a prefix of the full render; a template that closes
    /// the whole chat with a special token (Phi-3 ends with eos_token unless a generation prompt
    /// follows) gets that token dropped first when only then is it a prefix.
    package func closedTurn(_ through: [UInt8], within f: [UInt8]) -> Int? {
        func isPrefix(_ n: Int) -> Bool { n <= f.count && f[..<n].elementsEqual(through[..<n]) }
        if isPrefix(through.count) { return through.count }
        for token in Set(specialTokens.values) where !token.isEmpty {
            let t = Array(token.utf8)
            if through.count >= t.count, through[(through.count - t.count)...].elementsEqual(t), isPrefix(through.count - t.count) {
                return through.count - t.count
            }
        }
        return nil
    }

    /// The turn as the one-turn-longer render writes it (what follows the generation-prompt
    /// render there), found whole in the full render: for templates that move text between
    /// turns (Mistral v3 puts the system prompt into the last user turn).
    package func locateTurn(prefix: [UInt8]?, through: [UInt8]?, in f: [UInt8], from cursor: Int) -> (Int, Int)? {
        guard let prefix, let through, prefix.count < through.count, through[..<prefix.count].elementsEqual(prefix) else { return nil }
        var turns = [Array(through[prefix.count...])]
        for token in Set(specialTokens.values) where !token.isEmpty {
            let t = Array(token.utf8)
            if let turn = turns.first, turn.count > t.count, turn[(turn.count - t.count)...].elementsEqual(t) {
                turns.append(Array(turn[..<(turn.count - t.count)]))
            }
        }
        for turn in turns {
            if let hit = ChatTemplateRenderer.firstIndex(of: turn, in: f, from: cursor) { return (hit, hit + turn.count) }
        }
        return nil
    }

    /// Length of the common byte prefix, backed off to a UTF-8 character boundary.
    package static func commonPrefix(_ a: [UInt8], _ b: [UInt8]) -> Int {
        var n = 0
        while n < a.count, n < b.count, a[n] == b[n] { n += 1 }
        if n < a.count || n < b.count { while n > 0, n < b.count, b[n] & 0xC0 == 0x80 { n -= 1 } }
        return n
    }

    /// The end of assistant turn i found through a marker: the chat is rendered again with the
    /// message's content replaced by a marker, which shows where the content sits in the full
    /// render however the template rewrote it (Qwen3 drops `<think>…</think>` from earlier
    /// turns; an empty content next to tool calls); the turn ends after the text that follows
    /// the marker in the one-turn-longer render (`<|im_end|>`), if the full render has it there.
    /// Returns where the content starts (a start found by comparing renders can overshoot into
    /// a special token that two renders begin alike, `<think>` against `<|im_end|>`) and the end.
    package func markedEnd(_ messages: [ChatMessage], _ i: Int, full f: [UInt8], from start: Int,
                   kwargs: [String: JinjaValue], tools: JinjaValue) -> (Int, Int)? {
        let marker = "\u{F8FF}moe-tune-assistant-turn\u{F8FF}"
        let mb = Array(marker.utf8)
        var marked = messages
        switch marked[i].fields["content"] {
        case .string?, .none?, nil: marked[i].fields["content"] = .string(marker)
        default: return nil
        }
        guard let fm = try? Array(renderFull(marked, addGenerationPrompt: false, kwargs: kwargs, tools: tools).text.utf8),
              let tm = try? Array(renderFull(Array(marked[...i]), addGenerationPrompt: false, kwargs: kwargs, tools: tools).text.utf8),
              let at = ChatTemplateRenderer.firstIndex(of: mb, in: fm, from: 0),
              ChatTemplateRenderer.firstIndex(of: mb, in: fm, from: at + 1) == nil,
              let inThrough = ChatTemplateRenderer.lastIndex(of: mb, in: tm) else { return nil }
        let suffix = fm.count - at - mb.count
        guard at >= start, at <= f.count - suffix, f[..<at].elementsEqual(fm[..<at]),
              f[(f.count - suffix)...].elementsEqual(fm[(at + mb.count)...]) else { return nil }
        let contentEnd = f.count - suffix
        var closings = [Array(tm[(inThrough + mb.count)...])]
        for token in Set(specialTokens.values) where !token.isEmpty {
            let t = Array(token.utf8)
            if let c = closings.first, c.count >= t.count, c[(c.count - t.count)...].elementsEqual(t) { closings.append(Array(c[..<(c.count - t.count)])) }
        }
        for closing in closings where contentEnd + closing.count <= f.count {
            if f[contentEnd..<(contentEnd + closing.count)].elementsEqual(closing) { return (at, contentEnd + closing.count) }
        }
        return nil
    }

    /// The end of a turn whose start is known, for templates that drop the front of earlier
    /// turns (Qwen3's think block): the longest text from `start` in the full render that ends
    /// the turn as the one-turn-longer render writes it.
    package func suffixAligned(through: [UInt8]?, full f: [UInt8], start: Int) -> Int? {
        guard let through, start < through.count, start <= f.count, through[..<start].elementsEqual(f[..<start]) else { return nil }
        var turns = [Array(through[start...])]
        for token in Set(specialTokens.values) where !token.isEmpty {
            let t = Array(token.utf8)
            if let c = turns.first, c.count > t.count, c[(c.count - t.count)...].elementsEqual(t) { turns.append(Array(c[..<(c.count - t.count)])) }
        }
        for turn in turns {
            var e = min(f.count, start + turn.count)
            while e > start {
                if f[e - 1] == turn[turn.count - 1], f[start..<e].elementsEqual(turn[(turn.count - (e - start))...]) { return e }
                e -= 1
            }
        }
        return nil
    }

    /// The end of an assistant turn found by its content: the first place after `start` where
    /// the content (or the content trimmed) is followed by what closes the turn in `through`.
    package static func locateEnd(of m: ChatMessage, in f: [UInt8], from start: Int, through: [UInt8]?) -> Int? {
        guard let through, let content = m.content else { return nil }
        for c in [content, JinjaBuiltins.pyStrip(content, nil, left: true, right: true)] where !c.isEmpty {
            let cb = Array(c.utf8)
            guard let inThrough = lastIndex(of: cb, in: through) else { continue }
            let closing = Array(through[(inThrough + cb.count)...])
            var k = start
            while let hit = firstIndex(of: cb, in: f, from: k) {
                let after = hit + cb.count
                if after + closing.count <= f.count, f[after..<(after + closing.count)].elementsEqual(closing) {
                    return after + closing.count
                }
                k = hit + 1
            }
        }
        return nil
    }

    package static func firstIndex(of p: [UInt8], in s: [UInt8], from: Int) -> Int? {
        guard !p.isEmpty, s.count >= p.count, from <= s.count - p.count else { return nil }
        for i in from...(s.count - p.count) where s[i] == p[0] && s[i..<(i + p.count)].elementsEqual(p) { return i }
        return nil
    }

    package static func lastIndex(of p: [UInt8], in s: [UInt8]) -> Int? {
        guard !p.isEmpty, s.count >= p.count else { return nil }
        for i in stride(from: s.count - p.count, through: 0, by: -1) where s[i] == p[0] && s[i..<(i + p.count)].elementsEqual(p) { return i }
        return nil
    }
}
