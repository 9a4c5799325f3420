import ArgumentParser
import Foundation
import MoETune

/// moe-tune's side of ../shared/peer/peft_bench.py, with the same settings.
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-train",
        abstract: "Measure LoRA training tokens/s and peak memory on random tokens (as the peer benchmark does).",
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
    @Option(help: "Worker threads (default: the active cores).") var threads: Int?
    @Flag(help: "Also measure the machine's large-sgemm GFLOP/s (2048^3) and report the step's fraction of it.") var peak = false

    func run() throws {
        try runReportingErrors {
            if let threads { try Parallel.setWorkers(threads) }
            let base = try parseBaseDType(baseDType)
            let m = try Transformer.load(directory: model, quantize: qlora ? QuantizationSpec(doubleQuant: true) : nil, base: base)
            var bench = TrainBenchmark()
            bench.batch = batch; bench.seq = seq; bench.rank = rank; bench.steps = steps; bench.warmup = warmup
            if experts { bench.targets.insert(.mlp) }
            let r = try bench.run(model: m)
            let tokens = Double(batch * seq)
            let gflops = r.flopsPerStep / r.stepSeconds / 1e9
            var obj: [String: Any] = ["tool": "moe-tune", "tokens_per_s": (r.tokensPerSecond * 10).rounded() / 10,
                                      "step_s": (r.stepSeconds * 1000).rounded() / 1000, "trainable": r.trainable,
                                      "peak_rss_mb": r.peakRSSMB, "loss": (r.loss * 10000).rounded() / 10000,
                                      "blas_core": BLAS.ensureInitialized().core, "gemm": BLAS.gemmDescription, "qlora": qlora, "base_dtype": base.rawValue,
                                      "threads": Parallel.workers, "blas_threading": BLAS.threading.rawValue,
                                      "cpu_ms_per_token": (r.cpuSecondsPerStep / tokens * 1e6).rounded() / 1000,
                                      "step_gflop": (r.flopsPerStep / 1e8).rounded() / 10,
                                      "gflops": (gflops * 10).rounded() / 10]
            if peak {
                let p = largeSgemmGFLOPS()
                obj["peak_gflops"] = (p * 10).rounded() / 10
                obj["fraction_of_peak"] = (gflops / p * 1000).rounded() / 1000
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
