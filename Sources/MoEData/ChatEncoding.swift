import Foundation
import MoEFormats
import MoEText
import MoECore

/// A chat rendered by a Jinja template, as the token ids the training loop uses and the loss mask.
///
/// - ids: the tokens of the whole rendered chat (`render`, add_generation_prompt off), no special
///   tokens added: the template writes BOS itself. With tokenizer.json that is `encode(text)`,
///   which cuts special-token strings (`<|im_start|>`) out of the text as Hugging Face does, so
///   the ids are `apply_chat_template(messages, tokenize=True)`'s. With SentencePiece the rendered
///   text is split on the special-token strings of tokenizer_config.json (bos/eos/unk/pad/…)
///   that are pieces of tokenizer.model; each becomes its id and the text between them is
///   encoded piece by piece (as transformers' slow Llama tokenizer does, each piece getting
///   SentencePiece's leading space). Other control strings a template writes stay text.
/// - mask: a token is trained on when any byte of its text lies inside an assistant span of
///   `renderWithAssistantSpans` (the turn's text and its end-of-turn marker, `<|im_end|>`,
///   `<|eot_id|>`); so a token straddling a span edge is trained on. Tokens without text never
///   are, nor is the first token (nothing predicts it). `train_on_inputs`: every token but the first.
/// - the reply for `eval --generate`: the content of the last assistant message, generated from
///   `generationPrompt(messages before it)` encoded the same way.
public final class ChatEncoder: @unchecked Sendable {
    package let renderer: ChatTemplateRenderer
    package let tokenizer: any TextTokenizer
    /// SentencePiece only: special-token strings and their ids, longest first.
    package let specials: [(bytes: [UInt8], id: Int32)]

    package static let roles: Set<String> = ["system", "user", "assistant", "tool"]

    public init(renderer: ChatTemplateRenderer, tokenizer: any TextTokenizer) {
        self.renderer = renderer
        self.tokenizer = tokenizer
        var specials: [(bytes: [UInt8], id: Int32)] = []
        if !(tokenizer is HFTokenizer) {
            for s in Set(renderer.specialTokens.values) where !s.isEmpty {
                if let id = tokenizer.tokenId(s) { specials.append((Array(s.utf8), id)) }
            }
            specials.sort { $0.bytes.count > $1.bytes.count }
        }
        self.specials = specials
    }

    /// The tokens of rendered text with their UTF-8 ranges.
    package func spans(_ text: String) throws -> [TokenSpan] {
        if specials.isEmpty { return try tokenizer.encodeWithOffsets(text) }
        let b = Array(text.utf8)
        var out: [TokenSpan] = []
        var pieceStart = 0, i = 0
        func flush(_ end: Int) throws {
            guard end > pieceStart else { return }
            let piece = String(decoding: b[pieceStart..<end], as: UTF8.self)
            for t in try tokenizer.encodeWithOffsets(piece) {
                out.append(TokenSpan(id: t.id, utf8: (t.utf8.lowerBound + pieceStart)..<(t.utf8.upperBound + pieceStart)))
            }
        }
        while i < b.count {
            if let s = specials.first(where: { i + $0.bytes.count <= b.count && b[i..<(i + $0.bytes.count)].elementsEqual($0.bytes) }) {
                try flush(i)
                out.append(TokenSpan(id: s.id, utf8: i..<(i + s.bytes.count)))
                i += s.bytes.count
                pieceStart = i
            } else {
                i += 1
            }
        }
        try flush(b.count)
        return out
    }

    public func ids(_ text: String) throws -> [Int32] { try spans(text).map(\.id) }

    /// The ids of the generation prompt for a chat (add_generation_prompt on).
    public func promptIds(_ messages: [ChatMessage]) throws -> [Int32] { try ids(try renderer.generationPrompt(messages)) }

    /// The id of the token that closes an assistant turn in this template (`<|im_end|>`,
    /// `<|eot_id|>`), found by rendering a two-message chat; nil when that text is not one token.
    public func endOfTurnId() -> Int32? {
        let chat = [ChatMessage(role: "user", content: "Hi"), ChatMessage(role: "assistant", content: "Hello")]
        guard let (text, spans) = try? renderer.renderWithAssistantSpans(chat), let span = spans.last else { return nil }
        let turn = String(decoding: Array(text.utf8)[span], as: UTF8.self)
        guard let content = turn.range(of: "Hello") else { return nil }
        let tail = String(turn[content.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
        return tail.isEmpty ? nil : tokenizer.tokenId(tail)
    }

    /// Per token: whether any byte of it lies inside one of `ranges` (sorted, disjoint).
    package static func mask(_ tokens: [TokenSpan], inside ranges: [Range<Int>]) -> [Bool] {
        var k = 0
        return tokens.map { t in
            guard !t.utf8.isEmpty else { return false }
            while k < ranges.count, ranges[k].upperBound <= t.utf8.lowerBound { k += 1 }
            return k < ranges.count && ranges[k].lowerBound < t.utf8.upperBound
        }
    }

    /// The example of one chat. Errors are one-line messages without the file position.
    package func example(_ messages: [ChatMessage], tools: JinjaValue, line: Int, task: String?, trainOnInputs: Bool) throws -> Example {
        guard !messages.isEmpty else { throw MoETuneError.invalid("\"messages\" must be a non-empty list") }
        for (i, m) in messages.enumerated() where !ChatEncoder.roles.contains(m.role) {
            throw MoETuneError.invalid("messages[\(i)]: unknown role \"\(m.role)\" (expected system, user, assistant or tool)")
        }
        guard let last = messages.lastIndex(where: { $0.role == "assistant" }) else {
            throw MoETuneError.invalid("the conversation has no assistant message")
        }
        let (text, assistant) = try renderer.renderWithAssistantSpans(messages, tools: tools)
        let tokens = try spans(text)
        var counted = trainOnInputs ? tokens.map { _ in true } : ChatEncoder.mask(tokens, inside: assistant)
        if !counted.isEmpty { counted[0] = false }
        let promptIds = try ids(try renderer.generationPrompt(Array(messages[..<last]), tools: tools))
        let lastSpan = assistant.last
        let replyStart = lastSpan.flatMap { s in tokens.firstIndex { !$0.utf8.isEmpty && $0.utf8.upperBound > s.lowerBound } } ?? tokens.count
        let firstTrained = ChatEncoder.mask(tokens, inside: assistant).firstIndex(of: true) ?? tokens.count
        var ex = Example(tokens: tokens.map(\.id), counted: counted, line: line, promptLength: firstTrained, task: task,
                         reply: messages[last].content ?? "", replyStart: replyStart)
        ex.promptIds = promptIds
        return ex
    }
}
