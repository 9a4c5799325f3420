import Foundation
import MoEFormats
import MoEText
import MoECore

/// One {"prompt", "chosen", "rejected"} line after tokenization, as TRL 1.16's DPOTrainer makes
/// it: the prompt's ids (BOS for SentencePiece) and each completion's ids (EOS last), cut where
/// the prompt and prompt + completion tokenized whole part (PreferenceDataset.split). Preference
/// training scores the completions only.
public struct PreferenceExample: Sendable {
    public var prompt: [Int32]
    public var chosen: [Int32]
    public var rejected: [Int32]
    /// Line in the source file (1-based), for messages.
    public var line: Int

    public init(prompt: [Int32], chosen: [Int32], rejected: [Int32], line: Int) {
        self.prompt = prompt; self.chosen = chosen; self.rejected = rejected; self.line = line
    }

    /// Tokens of the longer of the two sequences (prompt + completion).
    public var longest: Int { prompt.count + max(chosen.count, rejected.count) }
}

/// A tokenized preference data file.
public struct PreferenceDataset: Sendable {
    public var path: String
    public var examples: [PreferenceExample]
    /// Pairs whose completions were cut to fit max_seq_len.
    public var truncated: Int

    /// Reads and tokenizes every line of `path`; a bad line is an error naming file and line:
    /// a missing or non-string field, an empty completion, a prompt that leaves no room for a
    /// completion within max_seq_len. Completions longer than that room are cut (counted).
    /// `chat`: the model's Jinja chat template, for lines whose prompt, chosen and rejected are
    /// message lists.
    public static func load(path: String, tokenizer: any TextTokenizer, vocabSize: Int, maxSeqLen: Int,
                            chat: ChatEncoder? = nil) throws -> PreferenceDataset {
        let rows = try JSONL.readObjects(path: path)
        guard !rows.isEmpty else { throw MoETuneError.file(path: path, message: "data file has no examples") }
        var examples: [PreferenceExample] = []
        var truncated = 0
        for (line, object) in rows {
            var ex = object["prompt"] is [Any]
                ? try chatPair(object, path: path, line: line, chat: chat)
                : try tokenize(object, path: path, line: line, tokenizer: tokenizer)
            if let bad = (ex.prompt + ex.chosen + ex.rejected).first(where: { $0 < 0 || Int($0) >= vocabSize }) {
                throw MoETuneError.line(path: path, line: line, message: "token id \(bad) is outside the model's vocabulary of \(vocabSize)")
            }
            let room = maxSeqLen - ex.prompt.count
            guard room >= 1 else {
                throw MoETuneError.line(path: path, line: line,
                    message: "the prompt has \(ex.prompt.count) tokens, which leaves no room for a completion within max_seq_len \(maxSeqLen); shorten it or raise training.max_seq_len")
            }
            if ex.chosen.count > room || ex.rejected.count > room {
                ex.chosen = Array(ex.chosen.prefix(room))
                ex.rejected = Array(ex.rejected.prefix(room))
                truncated += 1
            }
            examples.append(ex)
        }
        return PreferenceDataset(path: path, examples: examples, truncated: truncated)
    }

    package static func tokenize(_ object: [String: Any], path: String, line: Int, tokenizer: any TextTokenizer) throws -> PreferenceExample {
        func text(_ key: String) throws -> String {
            guard let v = object[key], !(v is NSNull) else {
                let keys = object.keys.sorted().joined(separator: ", ")
                throw MoETuneError.line(path: path, line: line,
                    message: "missing field \"\(key)\" (found: \(keys)); preference data lines are {\"prompt\", \"chosen\", \"rejected\"}")
            }
            guard let s = v as? String else {
                throw MoETuneError.line(path: path, line: line, message: "field \"\(key)\" must be a string")
            }
            return s
        }
        let prompt = try text("prompt"), chosen = try text("chosen"), rejected = try text("rejected")
        for (key, s) in [("chosen", chosen), ("rejected", rejected)] where s.isEmpty {
            throw MoETuneError.line(path: path, line: line, message: "field \"\(key)\" is empty: there is no completion to score")
        }
        return try split(prompt: tokenizer.prefixIds + (try tokenizer.encode(prompt)),
                         chosen: try tokenizer.trainingIds(prompt + chosen), rejected: try tokenizer.trainingIds(prompt + rejected),
                         path: path, line: line)
    }
}

extension PreferenceDataset {
    /// The pair as TRL 1.16 cuts it: the prompt's ids and the ids of prompt + chosen and prompt +
    /// rejected, each tokenized whole; the completions start where the prompt's ids and both
    /// sequences' stop agreeing (tokens can merge across the boundary), the prompt is cut there.
    package static func split(prompt: [Int32], chosen: [Int32], rejected: [Int32], path: String, line: Int) throws -> PreferenceExample {
        func common(_ a: [Int32], _ b: [Int32]) -> Int { zip(a, b).prefix { $0 == $1 }.count }
        let n = min(common(prompt, chosen), common(prompt, rejected))
        for (key, ids) in [("chosen", chosen), ("rejected", rejected)] where ids.count <= n {
            throw MoETuneError.line(path: path, line: line, message: "\"\(key)\" adds no token to the prompt: there is no completion to score")
        }
        return PreferenceExample(prompt: Array(prompt[..<n]), chosen: Array(chosen[n...]), rejected: Array(rejected[n...]), line: line)
    }

    /// A line of message lists, as TRL renders conversational preference data: the prompt with
    /// the generation prompt (add_generation_prompt), prompt + chosen and prompt + rejected whole.
    package static func chatPair(_ object: [String: Any], path: String, line: Int, chat: ChatEncoder?) throws -> PreferenceExample {
        func fail(_ message: String) -> MoETuneError { MoETuneError.line(path: path, line: line, message: message) }
        guard let chat else {
            throw fail("\"prompt\" is a list of messages, which needs the model's Jinja chat template (data.chat_template or the model folder's)")
        }
        func messages(_ key: String) throws -> [ChatMessage] {
            guard let v = object[key], !(v is NSNull) else { throw fail("missing field \"\(key)\"; preference data lines are {\"prompt\", \"chosen\", \"rejected\"}") }
            guard v is [Any], let text = String(data: try JSONSerialization.data(withJSONObject: v), encoding: .utf8),
                  let list = try? ChatMessage.list(fromJSON: text) else {
                throw fail("field \"\(key)\" must be a list of messages ({\"role\", \"content\"}) like \"prompt\"")
            }
            guard !list.isEmpty else { throw fail("field \"\(key)\" is empty: there is no \(key == "prompt" ? "prompt" : "completion") to score") }
            return list
        }
        let prompt = try messages("prompt"), chosen = try messages("chosen"), rejected = try messages("rejected")
        do {
            return try split(prompt: try chat.promptIds(prompt), chosen: try chat.ids(try chat.renderer.render(prompt + chosen)),
                             rejected: try chat.ids(try chat.renderer.render(prompt + rejected)), path: path, line: line)
        } catch let e as MoETuneError {
            if case .line = e { throw e }
            throw fail("chat template: \(e.description)")
        }
    }
}

/// P pairs as one TokenBatch of 2P rows, as TRL concatenates them: rows 0..<P prompt + chosen,
/// rows P..<2P prompt + rejected, right-padded. `completion[i]` (position i = row * T + t):
/// the prediction at i is of a completion token (t + 1 >= prompt length), the tokens whose
/// log-probabilities are summed. Those are the scored targets; with `chosenPromptTargets`
/// (ORPO's NLL, which TRL takes over the whole chosen sequence) the chosen rows' prompt
/// predictions are scored too.
public struct PreferenceBatch: Sendable {
    public let tokens: TokenBatch
    public let pairs: Int
    public let completion: [Bool]

    public init(_ examples: [PreferenceExample], chosenPromptTargets: Bool = false) {
        let p = examples.count
        var sequences: [[Int32]] = [], counted: [[Bool]] = [], isCompletion: [[Bool]] = []
        for (rejected, ex) in [false, true].flatMap({ r in examples.map { (r, $0) } }) {
            let c = rejected ? ex.rejected : ex.chosen
            let isC = Array(repeating: false, count: ex.prompt.count) + Array(repeating: true, count: c.count)
            sequences.append(ex.prompt + c)
            isCompletion.append(isC)
            var k = isC
            if chosenPromptTargets && !rejected { k = Array(repeating: true, count: k.count) }
            k[0] = false
            counted.append(k)
        }
        tokens = TokenBatch(sequences: sequences, counted: counted)
        pairs = p
        let t = tokens.seq
        var comp = [Bool](repeating: false, count: 2 * p * t)
        for (row, isC) in isCompletion.enumerated() {
            for j in 1..<isC.count where isC[j] { comp[row * t + j - 1] = true }
        }
        completion = comp
    }
}
