import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a model with LoRA as a YAML config says; writes a PEFT adapter.",
        discussion: """
        Every key of the config is documented in configs/example.yaml and docs/configuration.md. \
        Writes adapter_model.safetensors, adapter_config.json, config.yaml (the resolved config), \
        metrics.jsonl and report.html into training.out_dir, and a checkpoint into \
        out_dir/checkpoints/step-N every save_every steps and whenever training stops. \
        The first SIGINT or SIGTERM finishes the current step, writes a checkpoint and the adapter \
        and exits 130 or 143; --resume continues from the newest checkpoint exactly as the run \
        would have gone on. A second signal exits at once, the last checkpoint intact.

        Data parallel over several processes or machines: `mpirun -np N moe-tune train --config C.yaml` \
        (Open MPI). Each step's grad_accum x N micro-batches are shared out and the gradients summed, \
        so the result is the one-process run with grad_accum x N; rank 0 writes out_dir. \
        MOE_TUNE_MPI_TIMEOUT (seconds, default 300) bounds every wait for the other ranks.
        """)

    @Option(help: "YAML training config.")
    var config: String

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set training.max_steps=20 (repeatable).", valueName: "key.sub=value"))
    var overrides: [String] = []

    @Flag(help: "Start over in an out_dir that holds a training run (removes that run's files, nothing else).")
    var overwrite = false

    @Flag(help: "Continue the run in out_dir from its newest checkpoint (its files and training data verified against its manifest).")
    var resume = false

    @Flag(help: "With --resume: continue although a training data file changed since the checkpoint (recorded in metrics.jsonl).")
    var acceptDataChange = false

    func run() throws {
        let mpi: OpenMPI?
        do {
            let options = try StartUp.runOptions()
            mpi = try OpenMPI.fromEnvironment(processEnvironment, timeout: options.mpiTimeout)
        } catch let e as MoETuneError {
            FileHandle.standardError.write(Data("moe-tune: error: \(e.description)\n".utf8))
            throw ExitCode(1)
        }
        let world: Collective = mpi ?? SingleProcess()
        do {
            try train(world: world)
        } catch let e as MoETuneError where world.size > 1 {
            // One rank's error ends every rank at once (the others would wait for it).
            world.abort("moe-tune: error (rank \(world.rank) of \(world.size)): \(e.description)")
        }
        mpi?.finalize()
    }

    private func train(world: Collective) throws {
        try runReportingErrors {
            let cfg = try TrainConfig.load(path: config, overrides: overrides)
            let trainer = Trainer(config: cfg, configPath: config)
            trainer.runOptions = RunOptions.effective()
            noteBaseDType(cfg.baseDType)
            var events = TrainerEvents()
            let err = FileHandle.standardError
            events.log = { err.write(Data("\($0)\n".utf8)) }
            let progress = ProgressLine("step")
            events.step = { r in
                progress.update(done: r.step, total: r.totalSteps,
                                extra: String(format: "loss %.4f lr %.2e |g| %.3f %.0f scored tok/s", r.loss, r.lr, r.gradNorm,
                                              r.tokensPerSecond)
                                    + (r.computedTokens > 0 ? String(format: " (%.0f computed) pad %.0f%%", r.computedTokensPerSecond,
                                                                     100 * r.paddingShare) : ""))
            }
            events.evaluation = { split, step, r in
                progress.interrupt(String(format: "%@ loss %.4f (ppl %.2f) at step %d", split, r.loss, r.perplexity, step))
            }
            let signals = StopSignals { sig in
                err.write(Data("\n\(sig == SIGINT ? "SIGINT" : "SIGTERM"): stopping after this step to write a checkpoint (send it again to exit at once)\n".utf8))
            }
            events.shouldStop = { signals.requested != nil }
            if !world.isRoot {
                // Rank 0 speaks for the run.
                events.log = { _ in }
                events.step = { _ in }
                events.evaluation = { _, _, _ in }
            }
            let s = try trainer.run(overwrite: overwrite, resume: resume, acceptDataChange: acceptDataChange, events: events, world: world)
            signals.uninstall()
            guard world.isRoot else {
                if let step = s.stoppedAt { _ = step; throw ExitCode(128 + (signals.requested ?? SIGINT)) }
                return
            }
            if let step = s.stoppedAt {
                let sig = signals.requested ?? SIGINT
                let resumeCommand = (["moe-tune", "train", "--config", config] + overrides.flatMap { ["--set", $0] } + ["--resume"])
                    .map(shellQuoted).joined(separator: " ")
                print("stopped at step \(step): checkpoint \(s.checkpoint ?? "?"), adapter in \(s.outDir)\n"
                    + "resume with: \(resumeCommand)")
                throw ExitCode(128 + sig)
            }
            var lines = ["trained \(s.steps) steps, \(s.trainedTokens) tokens in \(formatDuration(s.seconds)) (\(String(format: "%.0f", Double(s.trainedTokens) / max(s.seconds, 1e-9))) tokens/s)"]
            // GRPO's evaluations are mean rewards of greedy completions, not losses.
            let measure = cfg.training.method == .grpo ? "mean reward" : "loss"
            if let a = s.firstValidLoss, let b = s.lastValidLoss { lines.append(String(format: "valid \(measure) %.4f -> %.4f", a, b)) }
            if let t = s.testLoss { lines.append(String(format: "test \(measure) %.4f", t)) }
            if let first = s.firstRouting, let last = s.lastRouting {
                lines.append("expert load at the first validation:\n" + expertTable(first))
                lines.append("expert load at the last validation:\n" + expertTable(last))
            }
            lines.append("adapter written to \(s.outDir)")
            print(lines.joined(separator: "\n"))
        }
    }
}

/// `s` quoted for a POSIX shell when it needs it.
func shellQuoted(_ s: String) -> String {
    let safe = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%")
    if !s.isEmpty, s.unicodeScalars.allSatisfy(safe.contains) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
