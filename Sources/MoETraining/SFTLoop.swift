import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// An SFT run once everything is built (SFTRun's steps): its position, the steps, the
/// evaluations and checkpoints, and the end.
final class SFTLoop {
    /// One step's sums over its micro-batches: tokens counted in the loss, computed (padding
    /// included) and real; the loss summed over the counted tokens, the aux and z losses.
    struct StepSums {
        var tokens = 0, computed = 0, real = 0
        var loss = 0.0, aux = 0.0, z = 0.0
    }

    let run: SFTRun
    let data: SFTRun.Datasets
    let plan: BatchPlan
    let adapters: AdapterSet
    let optimizer: Optimizer
    let totalSteps: Int
    let schedule: LearningRateSchedule
    let state: ForwardState
    let grads: BackwardState
    let metrics: MetricsLog?
    let yaml: String
    let dataIdentity: [TrainCheckpoint.FileIdentity]
    let resumed: TrainCheckpoint?
    /// Parameters of the last step whose loss was finite, restored if training diverges.
    let lastGood: FloatBuffer
    var model: Transformer { run.model }
    var world: Collective { run.world }
    var root: Bool { run.root }
    var tc: TrainConfig.TrainingSection { run.config.training }

    /// Micro-batches done, tokens trained on, run seconds at the last step (resumed runs count
    /// the checkpoint's), and when this process's steps started.
    private(set) var microIndex: Int
    private(set) var trainedTokens: Int
    private(set) var elapsed: Double
    private(set) var start = Date()
    let elapsedBefore: Double
    private(set) var firstValid: Double?
    private(set) var lastValid: Double?
    private(set) var firstRouting: RoutingStatistics?
    private(set) var lastRouting: RoutingStatistics?
    /// The newest checkpoint written (nil: none yet).
    private(set) var lastCheckpoint: String?
    /// Steps in a row whose gradient was exactly 0 with tokens to learn.
    private(set) var zeroGradientSteps = 0

    init(run: SFTRun, data: SFTRun.Datasets, _ t: SFTRun.Trainable, steps: SFTRun.StepPlan,
         buffers: (state: ForwardState, grads: BackwardState), start s: SFTRun.Start) {
        (self.run, self.data, plan, adapters, optimizer) = (run, data, t.plan, t.adapters, t.optimizer)
        (totalSteps, schedule, state, grads) = (steps.totalSteps, steps.schedule, buffers.state, buffers.grads)
        (metrics, yaml, dataIdentity, resumed) = (s.metrics, s.yaml, s.dataIdentity, s.resumed)
        lastGood = FloatBuffer(count: adapters.store.count)
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
        (firstValid, lastValid) = (resumed?.firstValidLoss, resumed?.lastValidLoss)
        elapsedBefore = resumed?.elapsed ?? 0
        (elapsed, trainedTokens, microIndex) = (elapsedBefore, resumed?.trainedTokens ?? 0, resumed?.microIndex ?? 0)
    }

    /// Steps from the checkpoint resumed (or the start) to the end or a stop; then the end.
    func train() throws -> TrainSummary {
        try begin()
        for step in stride(from: (resumed?.step ?? 0) + 1, through: totalSteps, by: 1) {
            try trainStep(step)
            if try evaluateAndCheckpoint(step: step) { return try finish(stoppedAt: step) }
        }
        return try finish(stoppedAt: nil)
    }

    /// The validation set evaluated at step 0 (a run that starts, not a resumed one); the clock starts.
    func begin() throws {
        if let valid = data.valid, resumed == nil {
            firstValid = try evaluate(valid, "valid", step: 0, limit: tc.evalBatches).loss
            lastValid = firstValid
        }
        start = Date()
    }

    /// Step `step`: this rank's share of grad_accum micro-batches forward and backward, the
    /// gradients and losses summed over ranks, clipped, the update (guarded against divergence);
    /// its metrics line (every log_every steps and the last) and event. Returns its record.
    @discardableResult
    func trainStep(_ step: Int) throws -> StepRecord {
        let group = microIndex..<(microIndex + tc.gradAccum)
        var sums = StepSums()
        for m in group {
            let mb = plan.microBatch(m)
            sums.tokens += mb.countedTokens
            sums.computed += mb.computedTokens
            sums.real += mb.realTokens
        }
        adapters.store.zeroGrads()
        adapters.dropout?.active = true
        model.moe.training = true
        let stepStart = Date()
        if sums.tokens > 0 { try forwardBackward(group, &sums) }
        microIndex += group.count
        if world.size > 1 {
            try world.sum(adapters.store.grads.pointer, count: adapters.store.count)
            let s = try world.sum([sums.loss, sums.aux, sums.z])
            (sums.loss, sums.aux, sums.z) = (s[0], s[1], s[2])
        }
        let traffic = world.takeTraffic()
        let loss = sums.tokens > 0 ? sums.loss / Double(sums.tokens) : 0
        let objective = loss + Double(model.moe.auxLossCoef) * sums.aux + Double(model.moe.zLossCoef) * sums.z
        let norm = clipGradientNorm(adapters.store, maxNorm: run.config.optimizer.gradClip.map(Float.init))
        let lr = try update(step, loss: loss, objective: objective, norm: norm, tokens: sums.tokens)
        trainedTokens += sums.tokens
        elapsed = elapsedBefore + Date().timeIntervalSince(start)
        let stepSeconds = max(Date().timeIntervalSince(stepStart), 1e-9)
        let record = StepRecord(step: step, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: sums.tokens,
                                tokensPerSecond: Double(sums.tokens) / stepSeconds,
                                elapsed: elapsed, computedTokens: sums.computed, realTokens: sums.real, seconds: stepSeconds)
        if step % tc.logEvery == 0 || step == totalSteps { try writeStep(record, sums, traffic: traffic) }
        run.events.step(record)
        return record
    }

    /// Forward and backward of this rank's micro-batches of `group` (rank r takes r, r + ranks,
    /// ...; all of them in one process), the gradients accumulated, the losses into `sums`.
    func forwardBackward(_ group: Range<Int>, _ sums: inout StepSums) throws {
        let accum = Double(tc.gradAccum), scale = 1 / Float(sums.tokens)
        for m in stride(from: group.lowerBound + world.rank, to: group.upperBound, by: world.size) {
            // Dropout masks and router noise follow the micro-batch, not the rank.
            adapters.dropout?.step = m
            model.moe.step = m
            state.headLossScale = scale
            let r = try model.forward(plan.microBatch(m), state: state, adapters: adapters)
            sums.loss += r.sum
            sums.aux += state.auxLoss / accum
            sums.z += state.zLoss / accum
            model.backward(state: state, adapters: adapters, grads: grads, lossScale: scale, auxScale: 1 / Float(tc.gradAccum))
        }
    }

    /// The optimizer step at the schedule's learning rate, which it returns. Refuses (the last
    /// good adapter kept) a non-finite loss or gradient, a gradient exactly 0 for
    /// DivergenceGuard.zeroGradientSteps steps, or an update that takes a weight out of range.
    func update(_ step: Int, loss: Double, objective: Double, norm: Double, tokens: Int) throws -> Double {
        let c = run.config, outDir = run.outDir
        guard objective.isFinite, norm.isFinite else {
            try restoreLastGood()
            throw MoETuneError.invalid("training diverged at step \(step): loss \(loss), gradient norm \(norm); the last adapter with a finite loss (the one step \(max(step - 1, 0)) evaluated) is saved in \(outDir); try a lower optimizer.lr")
        }
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
        let lr = schedule.lr(step: step)
        // Not NaN, but as dead: a gradient of exactly 0, step after step, with tokens to learn.
        zeroGradientSteps = norm == 0 && tokens > 0 ? zeroGradientSteps + 1 : 0
        if zeroGradientSteps >= DivergenceGuard.zeroGradientSteps {
            throw MoETuneError.config(path: run.configPath, key: "optimizer.lr",
                message: "training stopped at step \(step): the gradient norm has been exactly 0 for \(zeroGradientSteps) steps (loss \(loss)); "
                    + "the adapter is saturated, most likely by too high a learning rate (\(c.optimizer.lr)\(c.optimizer.gradClip == nil ? ", grad_clip off" : "")); "
                    + (keptCheckpoint().map { "the last checkpoint from before the gradient vanished, \($0), is kept" } ?? "no checkpoint was written")
                    + "; lower optimizer.lr and start again")
        }
        optimizer.step(lr: Float(lr))
        // An update that takes the weights out of any sane range: the step before it is kept.
        if let (i, v) = DivergenceGuard.firstExcessive(adapters.store) {
            try restoreLastGood()
            throw MoETuneError.config(path: run.configPath, key: "optimizer.lr",
                message: "training diverged at step \(step): an adapter weight reached \(v) (element \(i); more than \(DivergenceGuard.maxWeight) in magnitude) after an update at learning rate \(lr)"
                    + "\(c.optimizer.gradClip == nil ? " with grad_clip off" : ""); the learning rate is most likely too high: lower optimizer.lr"
                    + "\(c.optimizer.gradClip == nil ? " or set optimizer.grad_clip" : ""). The adapter before step \(step) is saved in \(outDir)"
                    + (keptCheckpoint().map { "; the last checkpoint \($0) is kept" } ?? ""))
        }
        return lr
    }

    /// The parameters of the last step with a finite loss back, and saved as the adapter (rank 0).
    private func restoreLastGood() throws {
        adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
        if root { try PEFTAdapter.save(adapters, family: model.family, baseModel: run.config.model, to: run.outDir) }
    }

    /// The newest checkpoint of the run (rank 0 knows it).
    private func keptCheckpoint() -> String? {
        lastCheckpoint ?? (root ? TrainCheckpoint.list(outDir: run.outDir).last?.path : nil)
    }

    /// The step's metrics line (rank 0).
    private func writeStep(_ record: StepRecord, _ sums: StepSums, traffic: (seconds: Double, bytes: Int)) throws {
        var line: [String: Any] = ["type": "step", "step": record.step, "loss": record.loss, "lr": record.lr, "grad_norm": record.gradNorm,
                                   "tokens": record.tokens, "tokens_per_s": record.tokensPerSecond, "elapsed_s": record.elapsed,
                                   "tokens_computed": record.computedTokens, "tokens_real": record.realTokens, "padding_share": record.paddingShare,
                                   "tokens_computed_per_s": record.computedTokensPerSecond]
        if model.config.isMoE { line["aux_loss"] = sums.aux; line["z_loss"] = sums.z }
        if world.size > 1 { line["ranks"] = world.size; line["allreduce_s"] = traffic.seconds; line["allreduce_bytes"] = traffic.bytes }
        try metrics?.write(line)
    }

    /// After step `step`: the validation set every eval_every steps (not at the last, which
    /// `finish` evaluates whole); a checkpoint and the adapter at a stop, every save_every
    /// steps and at the last. Returns true when the run stops here (a stop asked for before the last step).
    func evaluateAndCheckpoint(step: Int) throws -> Bool {
        if let valid = data.valid, tc.evalEvery > 0, step % tc.evalEvery == 0, step != totalSteps {
            lastValid = try evaluate(valid, "valid", step: step, limit: tc.evalBatches).loss
        }
        // Every rank stops at the same step (a signal reaches ranks at different moments).
        let stop = try world.any(run.events.shouldStop())
        // No periodic checkpoint while the gradient is exactly 0: with keep_checkpoints it
        // could rotate the last good one out before the guard in `update` stops the run.
        if stop || step == totalSteps || (tc.saveEvery > 0 && step % tc.saveEvery == 0 && zeroGradientSteps == 0) {
            try checkpoint(step: step)
            if step != totalSteps && root { try PEFTAdapter.save(adapters, family: model.family, baseModel: run.config.model, to: run.outDir) }
        }
        return stop && step != totalSteps
    }

    /// Checkpoint `step` (rank 0): position, parameters, optimizer state, validation losses.
    func checkpoint(step: Int) throws {
        guard root else { return }
        let ck = TrainCheckpoint(step: step, microIndex: microIndex, optimizerStep: optimizer.t, trainedTokens: trainedTokens,
                                 elapsed: elapsed, firstValidLoss: firstValid, lastValidLoss: lastValid,
                                 configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
        lastCheckpoint = try ck.write(outDir: run.outDir, adapters: adapters, optimizer: optimizer, family: model.family, baseModel: run.config.model,
                                      keep: tc.keepCheckpoints, data: dataIdentity)
    }

    /// `ds` evaluated (its first `limit` batches; nil: all), split over the ranks, without
    /// dropout or router noise; its metrics line and event. Keeps the validation routing.
    func evaluate(_ ds: Dataset, _ split: String, step: Int, limit: Int?) throws -> EvalResult {
        adapters.dropout?.active = false
        model.moe.training = false
        var subset = ds
        if let limit { subset.examples = Array(ds.examples.prefix(limit * tc.batchSize)) }
        let r = try run.trainer.evaluateShare(subset, model: model, adapters: adapters, batchSize: tc.batchSize, packing: tc.packingPlan, world: world)
        var line: [String: Any] = ["type": "eval", "step": step, "split": split, "loss": r.loss, "perplexity": r.perplexity,
                                   "tokens": r.tokens, "examples": r.examples]
        if let routing = r.routing {
            line["experts"] = routing.summary()
            if split == "valid" {
                if firstRouting == nil { firstRouting = routing }
                lastRouting = routing
            }
        }
        try metrics?.write(line)
        run.events.evaluation(split, step, r)
        return r
    }

    /// The end: after a stop, the report; after the last step, the whole validation and test
    /// sets evaluated, the adapter and the report written (rank 0). Returns the summary.
    func finish(stoppedAt: Int?) throws -> TrainSummary {
        let seconds = Date().timeIntervalSince(start), outDir = run.outDir
        var testLoss: Double?
        if stoppedAt == nil {
            if let valid = data.valid { lastValid = try evaluate(valid, "valid", step: totalSteps, limit: nil).loss }
            testLoss = try data.test.map { try evaluate($0, "test", step: totalSteps, limit: nil).loss }
            if root { try PEFTAdapter.save(adapters, family: model.family, baseModel: run.config.model, to: outDir) }
        }
        if root { try RunReport.write(outDir: outDir, title: "moe-tune: \((run.config.model as NSString).lastPathComponent) → \(outDir)") }
        return TrainSummary(steps: stoppedAt ?? totalSteps, seconds: seconds, trainedTokens: trainedTokens, firstValidLoss: firstValid,
                            lastValidLoss: lastValid, testLoss: testLoss, outDir: outDir, firstRouting: firstRouting, lastRouting: lastRouting,
                            stoppedAt: stoppedAt, checkpoint: stoppedAt == nil ? keptCheckpoint() : lastCheckpoint, resumedFrom: resumed?.step)
    }
}
