import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// Shows what the training loop would see: each example's token ids and loss mask, as JSON
/// lines or as decoded text with the trained spans marked (like axolotl's preprocessing debug view).
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Show each example's token ids and loss mask as training would use them.",
        discussion: """
        Without --json: the decoded tokens, trained spans in green on a terminal and between [[ and ]] \
        otherwise, then a summary. With --json: one {"ids": [...], "mask": [...]} object per line \
        (mask[j] = 1 when predicting token j counts toward the loss). --model may be a folder with \
        only tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json).
        """)

    @Option(help: "Model folder, or a folder with only the tokenizer files.") var model: String
    @Option(help: "JSONL data file.") var data: String
    @Flag(help: "One JSON object per example: {\"ids\": [...], \"mask\": [...]}.") var json = false
    @Option(help: "Longer examples keep their first N tokens.") var maxSeqLen = 2048
    @Option(help: "How {\"messages\"} lines are rendered: default the model's own template; \"llama2\", a .jinja file, or a {user}/{assistant} turn.")
    var chatTemplate: String?
    @Flag(help: "Count prompt tokens as targets too (data.train_on_inputs).") var trainOnInputs = false

    func validate() throws {
        guard maxSeqLen >= 2 else { throw ValidationError("--max-seq-len must be at least 2") }
    }

    func run() throws {
        try runReportingErrors {
            // config.json's BOS/EOS win as in training, when the folder has one.
            let hasConfig = FileManager.default.fileExists(atPath: (model as NSString).appendingPathComponent("config.json"))
            let config = hasConfig ? try ModelConfig.load(directory: model) : nil
            let tok = try TokenizerLoader.load(directory: model, bosId: config?.bosTokenId, eosIds: config?.eosTokenIds ?? [])
            let options = DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: trainOnInputs,
                                      chat: try ChatFormat.resolve(chatTemplate, modelDirectory: model))
            let ds = try Dataset.load(path: data, tokenizer: tok, vocabSize: config?.vocabSize ?? tok.vocabSize, options: options)
            if json {
                for ex in ds.examples {
                    let obj: [String: Any] = ["ids": ex.tokens.map(Int.init), "mask": ex.counted.map { $0 ? 1 : 0 }]
                    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                }
                return
            }
            let colour = isatty(STDOUT_FILENO) != 0
            let (open, close) = colour ? ("\u{1B}[32m", "\u{1B}[0m") : ("[[", "]]")
            for (n, ex) in ds.examples.enumerated() {
                print((colour ? "\u{1B}[1m" : "") + "example \(n + 1) (line \(ex.line)): \(ex.tokens.count) tokens, \(ex.countedTokens) trained"
                    + (colour ? "\u{1B}[0m" : ""))
                var out = ""
                var start = 0
                while start < ex.tokens.count {
                    var end = start
                    while end < ex.tokens.count, ex.counted[end] == ex.counted[start] { end += 1 }
                    let text = try TokenizeCommand.text(Array(ex.tokens[start..<end]), tok)
                    out += ex.counted[start] ? open + text + close : text
                    start = end
                }
                print(out)
                print("")
            }
            let tokens = ds.examples.reduce(0) { $0 + $1.tokens.count }
            print("\(ds.examples.count) examples, \(tokens) tokens, \(ds.countedTokens) trained tokens, \(ds.truncated) truncated (--max-seq-len \(maxSeqLen))")
            if ds.examples.contains(where: { $0.promptIds != nil }) || chatTemplate != nil {
                print("chats rendered with: \(options.chat.summary)")
            }
        }
    }

    /// The text of ids with special tokens shown (<|im_end|>, <s>).
    static func text(_ ids: [Int32], _ tok: any TextTokenizer) throws -> String {
        if let hf = tok as? HFTokenizer { return try hf.decode(ids, skipSpecialTokens: false) }
        if let sp = tok as? Tokenizer {
            var s = ""
            var plain: [Int32] = []
            for id in ids {
                if id == sp.bosId || id == sp.eosId {
                    s += try sp.decode(plain) + (try sp.piece(id)); plain = []
                } else { plain.append(id) }
            }
            return s + (try sp.decode(plain))
        }
        return try tok.decode(ids)
    }
}
