import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// moe-tune's side of ../shared/peer/peft_bench.py, with the same settings.
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-train",
        abstract: "Measure LoRA training tokens/s and peak memory on random tokens (as the peer benchmark does) or on a JSONL file's training batches.",
        shouldDisplay: false)

    @Option(help: "Model folder.") var model: String
    @Option(help: "Sequences per step.") var batch = 4
    @Option(help: "Tokens per sequence.") var seq = 256
    @Option(help: "LoRA rank (alpha = 2 * rank).") var rank = 8
    @Option(help: "Timed steps.") var steps = 6
    @Option(help: "Untimed warm-up steps.") var warmup = 2
    @Flag(help: "Also adapt every expert (or the dense MLP).") var experts = false
    @Flag(help: "QLoRA: NF4 base weights (double quantization), quantized while loading.") var qlora = false
    @Option(name: .customLong("base-dtype"), help: "Frozen base: fp32, bf16 or bf16-emulated.") var baseDType = "fp32"
    @Flag(help: "Recompute each decoder layer in the backward pass, keeping only its input (training.recompute: layers).")
    var recompute = false
    @Option(help: "Worker threads (default: the active cores).") var threads: Int?
    @Flag(help: "Also measure the machine's large-sgemm GFLOP/s (2048^3) and report the step's fraction of it.") var peak = false
    @Option(help: "Instruction data (JSONL): train on the micro-batches `train` forms from it (--batch rows, --max-seq-len, --seed; prompt tokens unscored) instead of random tokens.")
    var data: String?
    @Option(help: "With --data: longest example kept (training.max_seq_len).") var maxSeqLen = 512
    @Option(help: "With --data: data order (training.seed).") var seed = 0
    @Flag(help: "Head and loss over every row instead of the scored rows only (to measure what skipping unscored positions saves).")
    var allRows = false
    @Option(help: "With --data: write the token ids, labels (-100 where unscored) and attention masks of the warm-up and timed batches, in order, to this JSON file (scripts/peft_bench_data.py reads it).")
    var dumpBatches: String?

    func run() throws {
        try runReportingErrors(threads: threads) {
            if dumpBatches != nil, data == nil {
                throw MoETuneError.invalid("--dump-batches writes the batches of --data FILE.jsonl; random tokens have none to dump: pass --data")
            }
            let base = try parseBaseDType(baseDType)
            let quantize = qlora ? QuantizationSpec(doubleQuant: true) : nil
            var bench = TrainBenchmark()
            bench.batch = batch; bench.seq = seq; bench.rank = rank; bench.steps = steps; bench.warmup = warmup
            bench.scoredOnly = !allRows
            bench.recompute = recompute
            bench.chunkedHead = RunOptions.current.headChunks
            if experts { bench.targets.insert(.mlp) }
            try bench.checkSizes(data: data != nil)
            let m: Transformer
            var batches: [TokenBatch]?
            if let data {
                if let dumpBatches { try TrainBenchmark.checkDumpPath(dumpBatches, inputs: [model, data]) }
                let loaded = try LoadedModel.load(directory: model, quantize: quantize, base: base)
                m = loaded.model
                batches = try TrainBenchmark.dataBatches(path: data, loaded: loaded, modelDirectory: model, batchSize: batch,
                                                        maxSeqLen: maxSeqLen, seed: UInt64(seed), count: warmup + steps)
                if let dumpBatches {
                    try TrainBenchmark.dumpPeerBatches(batches!, warmup: warmup, steps: steps, to: dumpBatches, inputs: [model, data])
                }
            } else {
                m = try Transformer.load(directory: model, quantize: quantize, base: base)
            }
            let r = try bench.run(model: m, batches: batches)
            let gflops = r.flopsPerStep / r.stepSeconds / 1e9
            let computedPerStep = r.tokensPerSecond * r.stepSeconds
            var obj: [String: Any] = ["tool": "moe-tune", "tokens_per_s": (r.tokensPerSecond * 10).rounded() / 10,
                                      "step_s": (r.stepSeconds * 1000).rounded() / 1000, "trainable": r.trainable,
                                      "peak_rss_mb": r.peakRSSMB, "loss": (r.loss * 10000).rounded() / 10000,
                                      "first_loss": (r.firstLoss * 1e6).rounded() / 1e6,
                                      "blas_core": BLAS.ensureInitialized().core, "qlora": qlora, "base_dtype": base.rawValue,
                                      "threads": Parallel.workers, "blas_threading": BLAS.threading.rawValue,
                                      "cpu_ms_per_token": (r.cpuSecondsPerStep / computedPerStep * 1e6).rounded() / 1000,
                                      "step_gflop": (r.flopsPerStep / 1e8).rounded() / 10,
                                      "gflops": (gflops * 10).rounded() / 10, "scored_only": !allRows, "head_chunks": bench.chunkedHead, "recompute": recompute,
                                      "run_options": RunOptions.json(RunOptions.effective())]
            if data != nil {
                obj["data"] = data
                obj["scored_tokens_per_s"] = (r.scoredTokensPerSecond * 10).rounded() / 10
                obj["real_tokens_per_s"] = (r.realTokensPerSecond * 10).rounded() / 10
                obj["scored_share"] = (r.scoredTokensPerSecond / r.tokensPerSecond * 1000).rounded() / 1000
            }
            if peak {
                let p = largeSgemmGFLOPS()
                obj["peak_gflops"] = (p * 10).rounded() / 10
                obj["fraction_of_peak"] = (gflops / p * 1000).rounded() / 1000
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
