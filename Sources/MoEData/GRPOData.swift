import Foundation
import MoEFormats
import MoEText
import MoECore

/// One GRPO data line {"prompt": string or chat messages, ...any fields the rewards read}:
/// the prompt's ids (BOS for SentencePiece; for messages the chat template with the generation
/// prompt), the prompt as text (the string, or the rendered template), the line's other
/// string/number/bool fields as text (what `answer` a reward compares with), and the line as
/// JSON (what a reward program receives, with the completion added).
public struct GRPOPrompt: Sendable {
    public var ids: [Int32]
    public var text: String
    public var fields: [String: String]
    public var json: String
    /// Line in the source file (1-based), for messages.
    public var line: Int

    public init(ids: [Int32], text: String, fields: [String: String] = [:], json: String = "{}", line: Int) {
        self.ids = ids; self.text = text; self.fields = fields; self.json = json; self.line = line
    }
}

/// A tokenized GRPO prompt file.
public struct GRPODataset: Sendable {
    public var path: String
    public var prompts: [GRPOPrompt]

    public init(path: String, prompts: [GRPOPrompt]) { self.path = path; self.prompts = prompts }

    /// Reads and tokenizes every line of `path`; a bad line is an error naming file and line: a
    /// missing, empty or non-string/non-messages prompt, a prompt that leaves no room for
    /// `minNew` new tokens within max_seq_len.
    public static func load(path: String, tokenizer: any TextTokenizer, vocabSize: Int, maxSeqLen: Int, minNew: Int = 1,
                            chat: ChatEncoder? = nil) throws -> GRPODataset {
        let rows = try JSONL.readObjectsWithText(path: path)
        guard !rows.isEmpty else { throw MoETuneError.file(path: path, message: "data file has no examples") }
        var prompts: [GRPOPrompt] = []
        for (line, object, text) in rows {
            var p = try prompt(object, path: path, line: line, tokenizer: tokenizer, chat: chat)
            if let bad = p.ids.first(where: { $0 < 0 || Int($0) >= vocabSize }) {
                throw MoETuneError.line(path: path, line: line, message: "token id \(bad) is outside the model's vocabulary of \(vocabSize)")
            }
            guard !p.ids.isEmpty else { throw MoETuneError.line(path: path, line: line, message: "the prompt has no tokens") }
            guard p.ids.count + minNew <= maxSeqLen else {
                throw MoETuneError.line(path: path, line: line,
                    message: "the prompt has \(p.ids.count) tokens, which leaves no room for \(minNew) new tokens within max_seq_len \(maxSeqLen); shorten it or raise training.max_seq_len")
            }
            p.json = text.trimmingCharacters(in: .whitespacesAndNewlines)
            for (k, v) in object where k != "prompt" {
                switch v {
                case let s as String: p.fields[k] = s
                case let n as NSNumber: p.fields[k] = CFGetTypeIDIsBool(n) ? (n.boolValue ? "true" : "false") : "\(n)"
                default: break
                }
            }
            prompts.append(p)
        }
        return GRPODataset(path: path, prompts: prompts)
    }

    static func prompt(_ object: [String: Any], path: String, line: Int, tokenizer: any TextTokenizer, chat: ChatEncoder?) throws -> GRPOPrompt {
        func fail(_ message: String) -> MoETuneError { MoETuneError.line(path: path, line: line, message: message) }
        guard let v = object["prompt"], !(v is NSNull) else {
            let keys = object.keys.sorted().joined(separator: ", ")
            throw fail("missing field \"prompt\" (found: \(keys)); GRPO data lines are {\"prompt\", ...fields the rewards read}")
        }
        if let s = v as? String {
            guard !s.isEmpty else { throw fail("field \"prompt\" is empty") }
            return GRPOPrompt(ids: tokenizer.prefixIds + (try tokenizer.encode(s)), text: s, line: line)
        }
        guard v is [Any] else { throw fail("field \"prompt\" must be a string or a list of messages") }
        guard let chat else {
            throw fail("\"prompt\" is a list of messages, which needs the model's Jinja chat template (data.chat_template or the model folder's)")
        }
        guard let text = String(data: try JSONSerialization.data(withJSONObject: v), encoding: .utf8),
              let list = try? ChatMessage.list(fromJSON: text), !list.isEmpty else {
            throw fail("field \"prompt\" must be a non-empty list of messages ({\"role\", \"content\"})")
        }
        do {
            let rendered = try chat.renderer.generationPrompt(list)
            return GRPOPrompt(ids: try chat.ids(rendered), text: rendered, line: line)
        } catch let e as MoETuneError {
            throw fail("chat template: \(e.description)")
        }
    }
}

/// Completions as one TokenBatch, a row each: prompt + completion, right-padded; the scored
/// predictions are those of the completion tokens (`completionStart[i]`: the position in row i
/// whose prediction is the completion's first token).
public struct GRPOBatch: Sendable {
    public let tokens: TokenBatch
    public let completions: [[Int32]]
    public let promptLengths: [Int]

    public init(prompts: [[Int32]], completions: [[Int32]]) {
        precondition(prompts.count == completions.count)
        var sequences: [[Int32]] = [], counted: [[Bool]] = []
        for (p, c) in zip(prompts, completions) {
            sequences.append(p + c)
            counted.append(Array(repeating: false, count: p.count) + Array(repeating: true, count: c.count))
        }
        tokens = TokenBatch(sequences: sequences, counted: counted)
        self.completions = completions
        promptLengths = prompts.map(\.count)
    }

    public var rows: Int { completions.count }
}
