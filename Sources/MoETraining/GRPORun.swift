import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// One generation batch: its micro-batches of completions (advantages, old and reference
/// log-probs), the metrics of its rewards and lengths (TRL's names), a few samples.
struct GRPOGeneration {
    struct Micro {
        var batch: GRPOBatch
        var advantages: [Double]
        var old: [[Double]]?
        var ref: [[Double]]?
    }
    var index: Int
    var micro: [Micro]
    var metrics: [String: Double]
    var samples: [[String: Any]]
}

/// A GRPO run once everything is loaded: generations, steps, evaluations and checkpoints.
final class GRPORun {
    let config: TrainConfig, configPath: String, outDir: String
    let model: Transformer, tokenizer: any TextTokenizer, adapters: AdapterSet, refAdapters: AdapterSet?, optimizer: Optimizer
    let step: GRPOStep, generator: BatchGenerator, rewards: GRPORewardSet, plan: GRPOPlan, trainPath: String
    let totalSteps: Int, schedule: LearningRateSchedule
    let metrics: MetricsLog, yaml: String, dataIdentity: [TrainCheckpoint.FileIdentity], events: TrainerEvents
    let lastGood: FloatBuffer
    var lastCheckpoint: String?
    var firstValid: Double?, lastValid: Double?

    init(config c: TrainConfig, configPath: String, outDir: String, model: Transformer, tokenizer: any TextTokenizer, adapters: AdapterSet,
         refAdapters: AdapterSet?, optimizer: Optimizer, step: GRPOStep, generator: BatchGenerator, rewards: GRPORewardSet, plan: GRPOPlan,
         trainPath: String, totalSteps: Int, metrics: MetricsLog, yaml: String, dataIdentity: [TrainCheckpoint.FileIdentity], events: TrainerEvents) {
        (config, self.configPath, self.outDir, self.model, self.tokenizer) = (c, configPath, outDir, model, tokenizer)
        (self.adapters, self.refAdapters, self.optimizer, self.step, self.generator) = (adapters, refAdapters, optimizer, step, generator)
        (self.rewards, self.plan, self.trainPath, self.totalSteps, self.metrics) = (rewards, plan, trainPath, totalSteps, metrics)
        (self.yaml, self.dataIdentity, self.events) = (yaml, dataIdentity, events)
        schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                        minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)
        lastGood = FloatBuffer(count: adapters.store.count)
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
    }

    /// Steps from the checkpoint `resumed` (or the start) to the end or a stop. A stop asked
    /// for inside a generation batch waits for its last iteration (a resume starts a new one).
    /// The valid prompts are evaluated at the start, every eval_every steps and at the end.
    func train(valid: GRPODataset?, test: GRPODataset?, resumed: TrainCheckpoint?) throws -> TrainSummary {
        let tc = config.training, k = config.grpo.iterations
        (firstValid, lastValid) = (resumed?.firstValidLoss, resumed?.lastValidLoss)
        if let valid, resumed == nil {
            firstValid = try evaluate(valid, "valid", step: 0)
            lastValid = firstValid
        }
        var tokens = resumed?.trainedTokens ?? 0
        let start = Date(), elapsedBefore = resumed?.elapsed ?? 0
        var stoppedAt: Int?, stopAsked = false, current: GRPOGeneration?
        for s in stride(from: (resumed?.step ?? 0) + 1, through: totalSteps, by: 1) {
            let g = (s - 1) / k
            if current?.index != g { current = try generate(g) }
            tokens += try trainStep(s, current!, elapsed: { elapsedBefore + Date().timeIntervalSince(start) })
            if let valid, tc.evalEvery > 0, s % tc.evalEvery == 0, s != totalSteps {
                lastValid = try evaluate(valid, "valid", step: s)
            }
            stopAsked = stopAsked || events.shouldStop()
            let boundary = s % k == 0
            let stop = stopAsked && boundary
            // save_every: at the end of the generation batch within which a multiple of it falls.
            let due = boundary && tc.saveEvery > 0 && s / tc.saveEvery > (s - k) / tc.saveEvery
            if stop || s == totalSteps || due {
                try checkpoint(step: s, microIndex: (g + 1) * tc.gradAccum, trainedTokens: tokens, elapsed: elapsedBefore + Date().timeIntervalSince(start))
            }
            if stop && s != totalSteps { stoppedAt = s; break }
        }
        var testReward: Double?
        if stoppedAt == nil {
            if let valid { lastValid = try evaluate(valid, "valid", step: totalSteps) }
            testReward = try test.map { try evaluate($0, "test", step: totalSteps) }
        }
        try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir)
        try RunReport.write(outDir: outDir, title: "moe-tune grpo: \((config.model as NSString).lastPathComponent) → \(outDir)")
        return TrainSummary(steps: stoppedAt ?? totalSteps, seconds: Date().timeIntervalSince(start), trainedTokens: tokens,
                            firstValidLoss: firstValid, lastValidLoss: lastValid, testLoss: testReward, outDir: outDir, firstRouting: nil,
                            lastRouting: nil, stoppedAt: stoppedAt, checkpoint: lastCheckpoint, resumedFrom: resumed?.step)
    }

    /// Step `s` on generation `gen`: each micro-batch's loss and backward, clipping, the update,
    /// its metrics line (loss, TRL's clip and KL metrics averaged over the micro-batches, and the
    /// generation's reward metrics). Returns the completion tokens it trained on.
    func trainStep(_ s: Int, _ gen: GRPOGeneration, elapsed: () -> Double) throws -> Int {
        let stepStart = Date(), c = config, n = gen.micro.count
        adapters.store.zeroGrads()
        adapters.dropout?.active = true
        model.moe.training = true
        var loss = 0.0, values: [String: Double] = [:]
        for (i, mb) in gen.micro.enumerated() {
            let m = (s - 1) * n + i
            adapters.dropout?.step = m
            model.moe.step = m
            let r = try step.run(mb.batch, adapters: adapters, advantages: mb.advantages, old: mb.old, ref: mb.ref, settings: c.grpo.lossSettings,
                                 temperature: c.grpo.temperature, microScale: 1 / Double(n), auxScale: 1 / Float(n))
            loss += r.loss / Double(n)
            for (k, v) in r.metrics { values[k, default: 0] += v / Double(n) }
        }
        let norm = clipGradientNorm(adapters.store, maxNorm: c.optimizer.gradClip.map(Float.init))
        guard loss.isFinite, norm.isFinite else {
            throw try diverged("training diverged at step \(s): loss \(loss), gradient norm \(norm); the last adapter with a finite loss is saved in \(outDir); try a lower optimizer.lr")
        }
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
        let lr = schedule.lr(step: s)
        optimizer.step(lr: Float(lr))
        if let (i, v) = DivergenceGuard.firstExcessive(adapters.store) {
            throw try diverged("training diverged at step \(s): an adapter weight reached \(v) (element \(i)) after an update at learning rate \(lr); lower optimizer.lr. The adapter before step \(s) is saved in \(outDir)")
        }
        let tokens = gen.micro.reduce(0) { $0 + $1.batch.completions.reduce(0) { $0 + $1.count } }
        let seconds = max(Date().timeIntervalSince(stepStart), 1e-9)
        if s % c.training.logEvery == 0 || s == totalSteps {
            var line: [String: Any] = ["type": "step", "step": s, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens,
                                       "tokens_per_s": Double(tokens) / seconds, "elapsed_s": elapsed(), "generation": gen.index]
            for (k, v) in values.merging(gen.metrics, uniquingKeysWith: { a, _ in a }) { line[k] = v }
            try metrics.write(line)
        }
        events.step(StepRecord(step: s, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: tokens,
                               tokensPerSecond: Double(tokens) / seconds, elapsed: elapsed()))
        return tokens
    }

    /// The last good parameters back and saved; the error to throw.
    func diverged(_ message: String) throws -> MoETuneError {
        adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
        try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir)
        return MoETuneError.config(path: configPath, key: "optimizer.lr", message: message)
    }

    func checkpoint(step s: Int, microIndex: Int, trainedTokens: Int, elapsed: Double) throws {
        let ck = TrainCheckpoint(step: s, microIndex: microIndex, optimizerStep: optimizer.t, trainedTokens: trainedTokens,
                                 elapsed: elapsed, firstValidLoss: firstValid, lastValidLoss: lastValid,
                                 configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
        lastCheckpoint = try ck.write(outDir: outDir, adapters: adapters, optimizer: optimizer, family: model.family,
                                      baseModel: config.model, keep: config.training.keepCheckpoints, data: dataIdentity)
        if s != totalSteps { try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir) }
    }
}
