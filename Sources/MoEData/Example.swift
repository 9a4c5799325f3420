import Foundation
import MoEFormats
import MoEText
import MoECore

/// One training or evaluation example after tokenization: the full token sequence and,
/// per position j, whether predicting token j (from tokens 0..<j) counts toward the loss.
public struct Example: Sendable {
    public var tokens: [Int32]
    public var counted: [Bool]
    /// Line in the source file (1-based), for messages.
    public var line: Int
    /// Length of the prompt part (tokens that are context, not targets) before masking
    /// options were applied; equals 0 for plain text.
    public var promptLength: Int
    /// Optional "task" field of the line, for per-task breakdowns.
    public var task: String?
    /// For examples with an expected answer (completion, Alpaca output, the last assistant
    /// turn): the answer text and the token index where it starts (the generation prompt
    /// is tokens[0..<replyStart]).
    public var reply: String?
    public var replyStart = 0
    /// Chats with a Jinja template: the generation prompt's own ids (the template's rendering with
    /// add_generation_prompt), used for generation instead of tokens[0..<replyStart].
    public var promptIds: [Int32]?

    public var countedTokens: Int { counted.dropFirst().reduce(0) { $0 + ($1 ? 1 : 0) } }
}

/// How a data line becomes text and which part is trained on. The JSONL formats of
/// DESIGN.md section 2.
public enum ExampleFormat: String, Sendable {
    case text, promptCompletion = "prompt_completion", alpaca, chat

    /// Detects the format from the keys of one line.
    package static func detect(_ object: [String: Any]) -> ExampleFormat? {
        if object["messages"] != nil { return .chat }
        if object["text"] != nil { return .text }
        if object["prompt"] != nil || object["completion"] != nil { return .promptCompletion }
        if object["instruction"] != nil || object["output"] != nil { return .alpaca }
        return nil
    }
}

public struct DataOptions: Sendable {
    /// Longer examples keep their first maxSeqLen tokens (and are counted as truncated).
    public var maxSeqLen: Int
    /// Count prompt tokens as targets too.
    public var trainOnInputs: Bool

    /// How {"messages": ...} lines are rendered (ChatFormat.resolve gives the model's template).
    public var chat: ChatFormat

    public init(maxSeqLen: Int = 2048, trainOnInputs: Bool = false, chatTemplate: ChatTemplate = .llama2, chat: ChatFormat? = nil) {
        self.maxSeqLen = maxSeqLen
        self.trainOnInputs = trainOnInputs
        self.chat = chat ?? .builtin(chatTemplate)
    }
}

/// A tokenized data file.
public struct Dataset: Sendable {
    public var path: String
    public var examples: [Example]
    /// Examples cut at maxSeqLen.
    public var truncated: Int

    public var countedTokens: Int { examples.reduce(0) { $0 + $1.countedTokens } }

    /// Reads and tokenizes every line of `path`. Any bad line is an error naming the
    /// file and line; nothing is dropped silently.
    public static func load(path: String, tokenizer: any TextTokenizer, vocabSize: Int, options: DataOptions) throws -> Dataset {
        let rows = try JSONL.readObjectsWithText(path: path)
        guard !rows.isEmpty else { throw MoETuneError.file(path: path, message: "data file has no examples") }
        var encoder: ChatEncoder?
        if case let .jinja(renderer) = options.chat { encoder = ChatEncoder(renderer: renderer, tokenizer: tokenizer) }
        // Tokenize on every core, in chunks; results keep the file's order.
        var results = [Result<Example, Error>?](repeating: nil, count: rows.count)
        let chunk = 64
        let chunks = (rows.count + chunk - 1) / chunk
        results.withUnsafeMutableBufferPointer { out in
            nonisolated(unsafe) let out = out
            nonisolated(unsafe) let rows = rows
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                for k in (c * chunk)..<min(rows.count, (c + 1) * chunk) {
                    let (line, object, text) = rows[k]
                    out[k] = Result { try tokenize(object, path: path, line: line, tokenizer: tokenizer, options: options,
                                                   text: text, chat: encoder) }
                }
            }
        }
        var examples: [Example] = []
        var truncated = 0
        examples.reserveCapacity(rows.count)
        for (k, result) in results.enumerated() {
            let line = rows[k].0
            var ex = try result!.get()
            if let bad = ex.tokens.first(where: { Int($0) >= vocabSize || $0 < 0 }) {
                throw MoETuneError.line(path: path, line: line,
                    message: "token id \(bad) is outside the model's vocabulary of \(vocabSize)")
            }
            if ex.tokens.count > options.maxSeqLen {
                ex.tokens.removeLast(ex.tokens.count - options.maxSeqLen)
                ex.counted.removeLast(ex.counted.count - options.maxSeqLen)
                truncated += 1
            }
            examples.append(ex)
        }
        return Dataset(path: path, examples: examples, truncated: truncated)
    }

    /// One data line as an example, by its detected format: plain text, a chat (the Jinja
    /// template's encoder or a built-in template), or a prompt with its completion.
    package static func tokenize(_ object: [String: Any], path: String, line: Int, tokenizer: any TextTokenizer,
                         options: DataOptions, text: String? = nil, chat: ChatEncoder? = nil) throws -> Example {
        let task = object["task"] as? String
        guard let format = ExampleFormat.detect(object) else {
            let keys = object.keys.sorted().joined(separator: ", ")
            throw MoETuneError.line(path: path, line: line,
                message: "no known fields (found: \(keys)); expected \"text\", \"prompt\"+\"completion\", \"instruction\"+\"output\" or \"messages\"")
        }
        switch format {
        case .text:
            // SentencePiece: [BOS] + encode + [EOS]; tokenizer.json: transformers'
            // tokenizer(text).input_ids, then EOS unless already last.
            let text = try field(object, "text", path: path, line: line)!
            let tokens = try tokenizer.trainingIds(text)
            return Example(tokens: tokens, counted: [false] + Array(repeating: true, count: tokens.count - 1),
                           line: line, promptLength: 1, task: task)
        case .chat:
            var encoder = chat
            if encoder == nil, case let .jinja(renderer) = options.chat { encoder = ChatEncoder(renderer: renderer, tokenizer: tokenizer) }
            if let encoder {
                let source = try text ?? String(decoding: JSONSerialization.data(withJSONObject: object), as: UTF8.self)
                return try chatExample(source, path: path, line: line, task: task, encoder: encoder, options: options)
            }
            return try builtinChatExample(object, path: path, line: line, task: task, tokenizer: tokenizer, options: options)
        case .promptCompletion, .alpaca:
            return try completionExample(object, format: format, path: path, line: line, task: task,
                                         tokenizer: tokenizer, options: options)
        }
    }

    /// The string field `key` of a line; nil when absent or null and not `required`.
    package static func field(_ object: [String: Any], _ key: String, required: Bool = true, path: String, line: Int) throws -> String? {
        guard let v = object[key], !(v is NSNull) else {
            if required { throw MoETuneError.line(path: path, line: line, message: "missing field \"\(key)\"") }
            return nil
        }
        guard let s = v as? String else {
            throw MoETuneError.line(path: path, line: line, message: "field \"\(key)\" must be a string")
        }
        return s
    }

    /// A {"messages": ...} line with a built-in template (options.chat .builtin): each segment
    /// encoded in turn (EOS after the segments that take it), the replies counted.
    package static func builtinChatExample(_ object: [String: Any], path: String, line: Int, task: String?,
                                   tokenizer: any TextTokenizer, options: DataOptions) throws -> Example {
        guard let list = object["messages"] as? [Any], !list.isEmpty else {
            throw MoETuneError.line(path: path, line: line, message: "\"messages\" must be a non-empty list")
        }
        var messages: [(role: String, content: String)] = []
        for (i, item) in list.enumerated() {
            guard let m = item as? [String: Any], let role = m["role"] as? String, let content = m["content"] as? String else {
                throw MoETuneError.line(path: path, line: line,
                    message: "messages[\(i)] must be an object with string \"role\" and \"content\"")
            }
            messages.append((role, content))
        }
        let segments: [(text: String, counted: Bool, eos: Bool)]
        guard case let .builtin(template) = options.chat else { throw MoETuneError.invalid("no chat template") }
        do { segments = try template.segments(messages) } catch let e as MoETuneError {
            throw MoETuneError.line(path: path, line: line, message: e.description)
        }
        let eos = tokenizer.eosId
        var tokens: [Int32] = tokenizer.prefixIds
        var counted = [Bool](repeating: false, count: tokens.count)
        var promptLength = 0, lastReplyStart = 0
        for seg in segments {
            var ids = try tokenizer.encode(seg.text)
            if seg.eos, let eos { ids.append(eos) }
            if seg.counted { lastReplyStart = tokens.count }
            tokens += ids
            counted += Array(repeating: seg.counted || options.trainOnInputs, count: ids.count)
            if promptLength == 0, seg.counted { promptLength = tokens.count - ids.count }
        }
        let lastAssistant = messages.last { $0.role == "assistant" }?.content
        return Example(tokens: tokens, counted: counted, line: line, promptLength: promptLength, task: task,
                       reply: lastAssistant, replyStart: lastReplyStart)
    }

    /// A prompt/completion or Alpaca (instruction, input, output) line: the completion and
    /// EOS counted, the prompt only with train_on_inputs (never the first token).
    package static func completionExample(_ object: [String: Any], format: ExampleFormat, path: String, line: Int,
                                  task: String?, tokenizer: any TextTokenizer, options: DataOptions) throws -> Example {
        let prompt: String, completion: String
        if format == .promptCompletion {
            prompt = try field(object, "prompt", path: path, line: line)!
            completion = try field(object, "completion", path: path, line: line)!
        } else {
            prompt = AlpacaTemplate.prompt(instruction: try field(object, "instruction", path: path, line: line)!,
                                           input: try field(object, "input", required: false, path: path, line: line))
            completion = try field(object, "output", path: path, line: line)!
        }
        let eos = tokenizer.eosId
        let p = tokenizer.prefixIds + (try tokenizer.encode(prompt))
        var cpl = (try tokenizer.encode(completion)) + tokenizer.suffixIds
        if let eos, cpl.last != eos { cpl.append(eos) }
        let tokens = p + cpl
        var counted = Array(repeating: options.trainOnInputs, count: p.count) + Array(repeating: true, count: cpl.count)
        if !counted.isEmpty { counted[0] = false }
        return Example(tokens: tokens, counted: counted, line: line, promptLength: p.count, task: task,
                       reply: completion, replyStart: p.count)
    }
}

extension Dataset {
    /// A {"messages": ...} line with a Jinja template; `text` is the line, parsed again so that
    /// the messages keep their key order and number formatting.
    package static func chatExample(_ text: String, path: String, line: Int, task: String?, encoder: ChatEncoder,
                            options: DataOptions) throws -> Example {
        do {
            guard case let .dict(row) = try JinjaValue.fromJSON(text), case let .list(items)? = row["messages"] else {
                throw MoETuneError.invalid("\"messages\" must be a list")
            }
            let messages = try items.enumerated().map { i, item in
                do { return try ChatMessage(item) } catch { throw MoETuneError.invalid("messages[\(i)] must be an object with a string \"role\"") }
            }
            return try encoder.example(messages, tools: row["tools"] ?? JinjaValue.none, line: line, task: task,
                                       trainOnInputs: options.trainOnInputs)
        } catch let e as MoETuneError {
            throw MoETuneError.line(path: path, line: line, message: e.description)
        } catch {
            throw MoETuneError.line(path: path, line: line, message: "chat template: \(error)")
        }
    }
}

/// The Stanford Alpaca prompt template.
public enum AlpacaTemplate {
    public static func prompt(instruction: String, input: String?) -> String {
        if let input, !input.isEmpty {
            return "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n\(instruction)\n\n### Input:\n\(input)\n\n### Response:\n"
        }
        return "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n\(instruction)\n\n### Response:\n"
    }
}
