import Foundation
import MoEFormats
import MoEText
import MoECore

/// One {"prompt", "chosen", "rejected"} line after tokenization: the prompt's ids (with the
/// tokenizer's prefix, BOS for SentencePiece) and each completion's ids (with EOS), as
/// prompt_completion lines are tokenized. Preference training scores the completions only.
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
    public static func load(path: String, tokenizer: any TextTokenizer, vocabSize: Int, maxSeqLen: Int) throws -> PreferenceDataset {
        let rows = try JSONL.readObjects(path: path)
        guard !rows.isEmpty else { throw MoETuneError.file(path: path, message: "data file has no examples") }
        var examples: [PreferenceExample] = []
        var truncated = 0
        for (line, object) in rows {
            var ex = try tokenize(object, path: path, line: line, tokenizer: tokenizer)
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
        func completion(_ s: String) throws -> [Int32] {
            var ids = (try tokenizer.encode(s)) + tokenizer.suffixIds
            if let eos = tokenizer.eosId, ids.last != eos { ids.append(eos) }
            return ids
        }
        return PreferenceExample(prompt: tokenizer.prefixIds + (try tokenizer.encode(prompt)),
                                 chosen: try completion(chosen), rejected: try completion(rejected), line: line)
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
