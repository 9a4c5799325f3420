import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct ExpertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experts",
        abstract: "Score each expert of each layer over a JSONL file and select the experts ESFT would train.",
        discussion: """
        One forward pass over every example (no training). gate_score: the mean over all real tokens \
        of the expert's routing weight after the family's top-k normalisation (0 where not chosen); \
        token_share: the share of the tokens' top-k slots the expert fills. Per layer, the smallest \
        set of experts (in descending score, ties to the lower id) whose scores reach --coverage of \
        the layer's total is selected, as lora.experts in a training config does.
        """)

    @Option(help: "Hugging Face model folder or GGUF file of a Mixture-of-Experts model.")
    var model: String

    @Option(help: "JSONL data file (the training data).")
    var data: String

    @Option(help: "gate_score or token_share.")
    var select = "gate_score"

    // `.unconditional`: a negative value is refused with a reason, not read as a flag.
    @Option(parsing: .unconditional, help: "Share of each layer's total score the selected experts must reach, in (0, 1].")
    var coverage = 0.2

    @Option(parsing: .unconditional, help: "Sequences per forward pass.")
    var batchSize = 4

    @Option(parsing: .unconditional, help: "Longer examples keep their first N tokens (use training.max_seq_len).")
    var maxSeqLen = 2048

    @Option(help: "How {\"messages\"} lines are rendered: default the model's own template; \"llama2\", a .jinja file, or a {user}/{assistant} turn.")
    var chatTemplate: String?

    @Option(name: .customLong("base-dtype"), help: "Hold the frozen base in: fp32, bf16 (native bf16 only), bf16-emulated.")
    var baseDType = "fp32"

    @Flag(help: "Print exactly one JSON object on stdout: {select, coverage, tokens, layers: [{layer, scores, selected}]}.")
    var json = false

    func run() throws {
        try runReportingErrors {
            guard let kind = ExpertScoreKind(rawValue: select) else {
                throw MoETuneError.invalid("--select must be gate_score or token_share, got \(Printable.quoted(select))")
            }
            try ExpertSelection.checkCoverage(coverage)
            guard batchSize >= 1 else { throw MoETuneError.invalid("--batch-size must be at least 1, got \(batchSize)") }
            guard maxSeqLen >= 2 else { throw MoETuneError.invalid("--max-seq-len must be at least 2, got \(maxSeqLen)") }
            let base = try parseBaseDType(baseDType)
            noteBaseDType(base)
            let loaded = try LoadedModel.load(directory: model, quantize: nil, base: base)
            guard loaded.model.config.isMoE else {
                throw MoETuneError.invalid("\(model) is a dense \(loaded.model.config.family.name) model: it has no experts to score")
            }
            let format = try ChatFormat.resolve(chatTemplate, modelDirectory: model)
            let dataset = try Dataset.load(path: data, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                           options: DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: false, chat: format))
            let progress = ProgressLine("experts")
            let selection = try ExpertSelection.compute(model: loaded.model, dataset: dataset, batchSize: batchSize,
                                                        select: kind, coverage: coverage) { progress.update(done: $0, total: $1) }
            if json {
                print(String(decoding: try selection.jsonData(), as: UTF8.self))
            } else {
                print("model \(model), data \(data) (\(dataset.examples.count) examples"
                      + (dataset.truncated > 0 ? ", \(dataset.truncated) truncated" : "") + ")")
                print(selection.table())
            }
        }
    }
}
