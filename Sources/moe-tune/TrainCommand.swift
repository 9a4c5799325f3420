import ArgumentParser
import Foundation
import MoETune

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a model with LoRA as a YAML config says; writes a PEFT adapter.",
        discussion: """
        Every key of the config is documented in configs/example.yaml and README.md. \
        Writes adapter_model.safetensors, adapter_config.json, config.yaml (the resolved config), \
        metrics.jsonl and report.html into training.out_dir.
        """)

    @Option(help: "YAML training config.")
    var config: String

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set training.max_steps=20 (repeatable).", valueName: "key.sub=value"))
    var overrides: [String] = []

    @Flag(help: "Write into an out_dir that already holds a training run.")
    var overwrite = false

    func run() throws {
        try runReportingErrors {
            let cfg = try TrainConfig.load(path: config, overrides: overrides)
            let trainer = Trainer(config: cfg, configPath: config)
            var events = TrainerEvents()
            let err = FileHandle.standardError
            events.log = { err.write(Data("\($0)\n".utf8)) }
            let progress = ProgressLine("step")
            events.step = { r in
                progress.update(done: r.step, total: r.totalSteps,
                                extra: String(format: "loss %.4f lr %.2e |g| %.3f %.0f tok/s", r.loss, r.lr, r.gradNorm, r.tokensPerSecond))
            }
            events.evaluation = { split, step, r in
                progress.interrupt(String(format: "%@ loss %.4f (ppl %.2f) at step %d", split, r.loss, r.perplexity, step))
            }
            let s = try trainer.run(overwrite: overwrite, events: events)
            var lines = ["trained \(s.steps) steps, \(s.trainedTokens) tokens in \(formatDuration(s.seconds)) (\(String(format: "%.0f", Double(s.trainedTokens) / max(s.seconds, 1e-9))) tokens/s)"]
            if let a = s.firstValidLoss, let b = s.lastValidLoss { lines.append(String(format: "valid loss %.4f -> %.4f", a, b)) }
            if let t = s.testLoss { lines.append(String(format: "test loss %.4f", t)) }
            if let first = s.firstRouting, let last = s.lastRouting {
                lines.append("expert load at the first validation:\n" + expertTable(first))
                lines.append("expert load at the last validation:\n" + expertTable(last))
            }
            lines.append("adapter written to \(s.outDir)")
            print(lines.joined(separator: "\n"))
        }
    }
}
