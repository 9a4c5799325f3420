import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Mean token cross-entropy and perplexity of a model over a JSONL file.",
        discussion: """
        Lines are {"text": ...} (every next-token prediction counts), {"prompt": ..., "completion": ...} \
        or Alpaca {"instruction", "input", "output"} (only completion tokens and EOS count).
        """)

    @Option(help: "Hugging Face model folder (config.json, safetensors, tokenizer.json or tokenizer.model).")
    var model: String

    @Option(help: "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to apply (repeatable).")
    var adapter: [String] = []

    @Option(help: "Weight of each adapter, in --adapter order (repeatable; default 1 each).")
    var weight: [Float] = []

    @Flag(help: "Also decode greedily from each prompt and report exact-match accuracy (and per task).")
    var generate = false

    // `.unconditional`: a negative value is refused by validate with a reason, not read as a flag.
    @Option(parsing: .unconditional, help: "With --generate: the most new tokens per answer.")
    var maxNewTokens = 64

    @Option(parsing: .unconditional, help: "With --generate: sequences decoded at once (continuous batching); default every line, up to 256, fewer if their KV caches would pass a quarter of the memory.")
    var parallel: Int?

    @Flag(help: "With --generate: multiply as training does (weights widened to fp32), not in their own blocks; slower, the reference answers.")
    var exact = false

    @Option(help: "Quantize the base weights while loading: nf4 (QLoRA; attention, MLP and experts in 4 bits).")
    var quantize: String?

    @Option(name: .customLong("base-dtype"), help: "Hold the frozen base in: fp32, bf16 (native bf16 only), bf16-emulated (half the memory, slower; docs/commands.md).")
    var baseDType = "fp32"

    @Option(help: "JSONL data file.")
    var data: String

    @Option(help: "Sequences per forward pass.")
    var batchSize: Int = 4

    @Option(help: "Longer examples keep their first N tokens.")
    var maxSeqLen: Int = 2048

    @Option(help: "How {\"messages\"} lines are rendered: default the model's own template; \"llama2\", a .jinja file, or a {user}/{assistant} turn.")
    var chatTemplate: String?

    @Flag(help: "Pack examples into rows of --max-seq-len tokens, --batch-size rows a forward pass (same loss, less padding).")
    var packing = false

    @Flag(help: "Report how tokens spread over the experts of each layer (MoE models).")
    var expertStats = false

    @Flag(help: "Print exactly one JSON object on stdout.")
    var json = false

    @Option(help: "With --generate: write every answer as a JSON line {correct, expected, generated, task}, in data order, to this new file.")
    var predictions: String?

    func validate() throws {
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard maxSeqLen >= 2 else { throw ValidationError("--max-seq-len must be at least 2") }
        guard weight.isEmpty || weight.count == adapter.count else { throw ValidationError("give one --weight per --adapter") }
        if let quantize, quantize != "nf4" { throw ValidationError("--quantize supports nf4 only") }
        _ = try parseBaseDType(baseDType)
        guard maxNewTokens >= 1 else { throw ValidationError("--max-new-tokens must be at least 1") }
        if let parallel, !(1...256).contains(parallel) { throw ValidationError("--parallel must be in 1...256, got \(parallel)") }
        if predictions != nil, !generate { throw ValidationError("--predictions needs --generate") }
        guard maxNewTokens <= maxNewTokensLimit else { throw ValidationError("--max-new-tokens must be at most \(maxNewTokensLimit), got \(maxNewTokens)") }
    }

    func run() throws {
        try runReportingErrors {
            if let predictions, FileManager.default.fileExists(atPath: predictions) {
                throw MoETuneError.invalid("--predictions \(predictions) exists; moe-tune does not overwrite it (remove it or choose another name)")
            }
            let base = try parseBaseDType(baseDType)
            noteBaseDType(base)
            let loaded = try LoadedModel.load(directory: model, quantize: quantize == nil ? nil : QuantizationSpec(doubleQuant: true), base: base)
            let adapters = try loadAdapters(adapter, weights: weight, model: loaded.model)
            let format = try ChatFormat.resolve(chatTemplate, modelDirectory: model)
            let dataset = try Dataset.load(path: data, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                           options: DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: false, chat: format))
            // Replies of chats end at the template's end-of-turn token (<|eot_id|>) even where EOS differs.
            var endOfTurn = Set<Int32>()
            if case let .jinja(renderer) = format, let id = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer).endOfTurnId() {
                endOfTurn.insert(id)
            }
            if dataset.truncated > 0 {
                FileHandle.standardError.write(Data("moe-tune: note: \(dataset.truncated) of \(dataset.examples.count) examples were longer than --max-seq-len \(maxSeqLen) and were truncated\n".utf8))
            }
            let progress = ProgressLine("eval")
            let r = try Evaluator.evaluate(model: loaded.model, adapters: adapters, dataset: dataset, batchSize: batchSize,
                                           packing: packing ? PackingPlan(rowTokens: max(1, maxSeqLen), rows: max(1, batchSize)) : nil) { done, total in
                progress.update(done: done, total: total)
            }
            guard r.loss.isFinite else {
                throw MoETuneError.invalid("the evaluation loss is \(r.loss) over \(r.tokens) tokens of \(data): the model\(adapter.isEmpty ? "" : " or adapter") produced non-finite logits; check \(adapter.isEmpty ? model : adapter.joined(separator: ", ")) for NaN/inf weights (or an F16 overflow)")
            }
            var em: ExactMatchResult?
            if generate {
                let genProgress = ProgressLine("generate")
                em = try ExactMatch.evaluate(model: loaded.model, adapters: adapters, tokenizer: loaded.tokenizer, dataset: dataset,
                                             maxNewTokens: maxNewTokens, extraStopIds: endOfTurn, parallel: parallel,
                                             products: exact ? .exact : .fast) { genProgress.update(done: $0, total: $1) }
                reportSpeed(em!.timings)
            }
            if let predictions, let em { try AtomicFile.write(try em.answersJSONL(), to: predictions) }
            if json { try printJSON(r, em) } else { printText(r, em, family: loaded.model.config.family.name) }
        }
    }

    /// One JSON object: loss, perplexity, tokens, examples; expert_stats, exact_match and per_task when asked.
    private func printJSON(_ r: EvalResult, _ em: ExactMatchResult?) throws {
        // A loss above ~709 overflows exp: the perplexity is then null, never an invalid number.
        var obj: [String: Any] = ["loss": r.loss, "perplexity": r.perplexity.isFinite ? r.perplexity : NSNull(),
                                  "tokens": r.tokens, "examples": r.examples]
        if expertStats, let routing = r.routing { obj["expert_stats"] = routing.summary() }
        if let em {
            obj["exact_match"] = em.accuracy
            obj["per_task"] = em.perTask.mapValues { ["exact_match": $0.total > 0 ? Double($0.correct) / Double($0.total) : 0,
                                                      "correct": $0.correct, "examples": $0.total] }
        }
        // Valid JSON or nothing: an object that cannot be encoded is an error on stderr.
        guard JSONSerialization.isValidJSONObject(obj), let json = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) else {
            throw MoETuneError.invalid("the results hold a value JSON cannot encode (a NaN or infinite statistic); run without --json to see them")
        }
        print(String(decoding: json, as: UTF8.self))
    }

    /// The results as text: loss and perplexity, exact match per task with three samples, the expert table.
    private func printText(_ r: EvalResult, _ em: ExactMatchResult?, family: String) {
        print("""
        model       \(model)\(adapter.isEmpty ? "" : " + adapter " + adapter.joined(separator: ", "))
        data        \(data) (\(r.examples) examples, \(r.tokens) scored tokens\(r.truncated > 0 ? ", \(r.truncated) truncated" : ""))
        loss        \(String(format: "%.6f", r.loss))
        perplexity  \(String(format: "%.4f", r.perplexity))
        time        \(String(format: "%.2f", r.seconds)) s (\(String(format: "%.0f", Double(r.tokens) / max(r.seconds, 1e-9))) scored tokens/s)
        """)
        if let em {
            print(String(format: "exact match %.1f%% (%d of %d)", 100 * em.accuracy, em.correct, em.total))
            for task in em.perTask.keys.sorted() {
                let t = em.perTask[task]!
                let name = task.count < 14 ? task + String(repeating: " ", count: 14 - task.count) : task
                print("  " + name + String(format: " %5.1f%% (%d of %d)", 100 * Double(t.correct) / Double(max(t.total, 1)), t.correct, t.total))
            }
            for s in em.samples.prefix(3) {
                print("  e.g. \(s.prompt.debugDescription) -> \(s.generated.debugDescription) (expected \(s.expected.debugDescription))")
            }
        }
        if expertStats {
            if let routing = r.routing {
                print("\nexpert load (share of each layer's assignments, valid tokens only)\n" + expertTable(routing))
            } else {
                print("\n(no experts: \(family) is a dense model)")
            }
        }
    }
}
