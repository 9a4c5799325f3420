import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Remove the least salient experts of each layer (REAP) and write the smaller model.",
        discussion: """
        One forward pass over the calibration data scores every expert of every routed layer: reap \
        (Cerebras' router-weighted expert activation pruning: the mean over the tokens routed to the \
        expert of its routing weight times the L2 norm of its output), frequency (the share of the \
        tokens' top-k slots it fills) or random (seeded; no data needed). Each layer keeps its --keep \
        most salient experts (ties: the lower id), renumbered in order; the router loses the dropped \
        experts' rows and config.json (or the GGUF metadata) the expert count. Top-k stays unless \
        --top-k. --out DIR writes a Hugging Face folder, --out FILE.gguf a GGUF for llama.cpp.
        """)

    @Option(help: "Hugging Face model folder or GGUF file of a Mixture-of-Experts model.")
    var model: String

    @Option(help: "Calibration JSONL file (required unless --method random).")
    var data: String?

    @Option(parsing: .unconditional, help: "Experts to keep per layer: a fraction in (0, 1) or a count.")
    var keep: Double

    @Option(help: "reap, frequency or random.")
    var method = "reap"

    @Option(parsing: .unconditional, help: "Seed of --method random.")
    var seed: UInt64 = 0

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Experts per token in the pruned model (default: the model's).")
    var topK: Int?

    @Option(help: "Output: a folder (Hugging Face) or a .gguf file.")
    var out: String

    @Option(help: "A PEFT adapter of --model to prune alongside (its dropped experts' adapters removed, the rest renumbered).")
    var adapter: String?

    @Option(help: "New folder for the pruned adapter (with --adapter).")
    var adapterOut: String?

    @Flag(help: "Replace an --out that moe-tune wrote before.")
    var overwrite = false

    @Option(help: "GGUF weight type when a Hugging Face folder is written as .gguf: f32, f16, bf16, q8_0 or q4_0.")
    var ggufType = "f32"

    @Option(parsing: .unconditional, help: "Sequences per forward pass.")
    var batchSize = 4

    @Option(parsing: .unconditional, help: "Longer examples keep their first N tokens.")
    var maxSeqLen = 2048

    @Option(help: "How {\"messages\"} lines are rendered: default the model's own template; \"llama2\", a .jinja file, or a {user}/{assistant} turn.")
    var chatTemplate: String?

    @Flag(help: "Print exactly one JSON object on stdout: {method, seed, experts, keep, top_k, tokens, layers: [{layer, saliency, kept}], out}.")
    var json = false

    func run() throws {
        try runReportingErrors {
            guard let kind = PruneMethod(rawValue: method) else {
                throw MoETuneError.invalid("--method must be reap, frequency or random, got \(Printable.quoted(method))")
            }
            guard batchSize >= 1 else { throw MoETuneError.invalid("--batch-size must be at least 1, got \(batchSize)") }
            guard maxSeqLen >= 2 else { throw MoETuneError.invalid("--max-seq-len must be at least 2, got \(maxSeqLen)") }
            guard let type = GGMLQuantize.writable.first(where: { $0.name.lowercased() == ggufType }) else {
                throw MoETuneError.invalid("--gguf-type must be f32, f16, bf16, q8_0 or q4_0")
            }
            guard kind == .random || data != nil else { throw MoETuneError.invalid("--method \(kind.rawValue) needs calibration data: --data FILE.jsonl") }
            guard (adapter == nil) == (adapterOut == nil) else { throw MoETuneError.invalid("--adapter and --adapter-out go together") }
            if let adapterOut { try OutputFolder.check(adapterOut, option: "--adapter-out", inputs: [model] + [adapter!], overwrite: false) }
            let toGGUF = GGUFFile.isGGUFPath(out)
            if toGGUF { try GGUFExport.checkOutput(out, inputs: [model], overwrite: overwrite) } else {
                guard !GGUFFile.isGGUFPath(model) else {
                    throw MoETuneError.file(path: model, message: "a GGUF model prunes into a GGUF file only: give --out FILE.gguf")
                }
                try OutputFolder.check(out, inputs: [model], overwrite: overwrite)
            }
            let loaded = try LoadedModel.load(directory: model, quantize: nil, base: .fp32)
            let c = loaded.model.config
            try ExpertPruner.checkPrunable(c, path: model)
            let count = try PrunePlan.keepCount(keep, experts: c.numExperts)
            if let k = topK ?? Optional(c.expertsPerToken), k > count || k < 1 {
                throw MoETuneError.invalid("top-k \(k) exceeds the \(count) experts kept per layer: keep more experts or pass --top-k at most \(count)")
            }
            var dataset: Dataset?
            if kind != .random, let data {
                let format = try ChatFormat.resolve(chatTemplate, modelDirectory: model)
                dataset = try Dataset.load(path: data, tokenizer: loaded.tokenizer, vocabSize: c.vocabSize,
                                           options: DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: false, chat: format))
            }
            let progress = ProgressLine("prune")
            let adapters = try adapter.map { try PEFTAdapter.load(directory: $0, model: loaded.model) }
            defer { withExtendedLifetime(adapters) {} }
            let plan = try PrunePlan.compute(model: loaded.model, adapters: adapters, dataset: dataset, batchSize: batchSize, method: kind,
                                             keep: count, seed: seed) { progress.update(done: $0, total: $1) }
            let start = Date()
            let s = toGGUF
                ? try ExpertPruner.pruneGGUF(model: model, kept: plan.kept, topK: topK, out: out, overwrite: overwrite, type: type)
                : try ExpertPruner.pruneFolder(model: model, kept: plan.kept, topK: topK, outDir: out, overwrite: overwrite)
            var adapterModules: Int?
            if let adapter, let adapterOut {
                adapterModules = try ExpertPruner.pruneAdapter(adapter: adapter, model: model, kept: plan.kept, topK: topK,
                                                               outDir: adapterOut, baseModel: out)
            }
            if json {
                var obj = plan.jsonObject
                if let adapterOut { obj["adapter_out"] = adapterOut }
                obj["top_k"] = s.topK
                obj["out"] = out
                print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
            } else {
                print(plan.table())
                print("wrote \(out): \(s.experts) of \(c.numExperts) experts per layer, top-k \(s.topK), \(s.tensors) tensors, "
                      + "\(String(format: "%.1f", Double(s.bytes) / 1_048_576)) MiB in \(formatDuration(Date().timeIntervalSince(start)))")
                if let adapterOut, let adapterModules { print("wrote the pruned adapter \(adapterOut): \(adapterModules) modules") }
            }
        }
    }
}
