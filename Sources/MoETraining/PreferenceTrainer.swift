import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// training.method dpo and orpo: the same run as SFT (out_dir, checkpoints, step-exact resume,
/// metrics.jsonl, report.html, the PEFT adapter) over {"prompt", "chosen", "rejected"} pairs,
/// batch_size pairs a micro-batch, grad_accum micro-batches a step; the loss of a step is the
/// mean over its pairs (PreferenceStep). The reference of DPO is the base with the adapter off
/// (with training.init_adapter: the base with that adapter, frozen, as TRL uses its "ref" copy).
extension Trainer {
    func trainPreference(outDir: String, resume: Bool, resumeFrom: String?, acceptDataChange: Bool, events: TrainerEvents,
                         world: Collective) throws -> TrainSummary {
        // As SFT: the run one process would do, grad_accum x ranks micro-batches a step (recorded so).
        var c = config
        guard c.training.gradAccum * world.size <= TrainConfig.limits.gradAccum else {
            throw MoETuneError.config(path: configPath, key: "training.grad_accum",
                                      message: "\(c.training.gradAccum) x \(world.size) ranks is more than \(TrainConfig.limits.gradAccum) micro-batches a step")
        }
        c.training.gradAccum *= world.size
        let tc = c.training
        try requirePreferenceSupport()
        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization, base: c.baseDType)
        let model = loaded.model
        try configureMoE(model)
        JSONL.maxLineBytes = c.data.maxLineBytes
        defer { JSONL.maxLineBytes = JSONL.defaultMaxLineBytes }
        let data = try loadPreferenceData(loaded, events: events)
        let adapters = try makeAdapters(model: model, config: c, events: events)
        let refAdapters = try tc.initAdapter.map { try PEFTAdapter.load(directory: $0, model: model) }
        let plan = PreferencePlan(examples: data.train, batchSize: tc.batchSize, seed: UInt64(bitPattern: Int64(tc.seed)),
                                  orpo: tc.method == .orpo)
        let stepsFromEpochs = (Double(plan.perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up)
        let totalSteps = tc.maxSteps ?? max(1, Int(min(stepsFromEpochs, Double(TrainConfig.limits.maxSteps))))
        let all = data.train + (data.valid ?? []) + (data.test ?? [])
        let longest = all.map(\.longest).max() ?? 1
        let rows = 2 * min(tc.batchSize, max(data.train.count, data.valid?.count ?? 0, data.test?.count ?? 0))
        try requireWholeHeadFits(model, rows: rows, seq: longest, loraRank: max(adapters.maxRank, refAdapters?.maxRank ?? 0),
                                 batch: "\(rows / 2) pairs (\(rows) sequences of up to \(longest) tokens)",
                                 lower: "training.batch_size or training.max_seq_len")
        let state = ForwardState(config: model.config, batch: rows, seq: longest, training: true,
                                 loraRank: max(adapters.maxRank, refAdapters?.maxRank ?? 0), jitter: model.moe.jitter > 0, headChunkRows: nil,
                                 recompute: tc.recompute == .layers)
        state.scoredOnly = true
        let mc = model.config
        adapters.dropout?.reserve(rows * longest * max(mc.hiddenSize, mc.intermediateSize, mc.expertIntermediateSize, mc.sharedExpertIntermediateSize, mc.qDim))
        events.log("\(tc.method.rawValue): \(data.train.count) pairs, \(plan.perEpoch) micro-batches of up to \(tc.batchSize) pairs an epoch, \(totalSteps) steps")

        // Resume: as SFT's (config, data and position checked against the checkpoint by rank 0,
        // which shares it).
        let optimizer = Trainer.makeOptimizer(c, store: adapters.store)
        let yaml = c.resolvedYAML()
        if world.size > 1 { try requireSameRun(c, yaml: yaml, world: world, events: events) }
        let dataIdentity = world.isRoot ? try TrainCheckpoint.identify(data: c.data.trainFiles.map(\.path)) : []
        var resumed = try (world.isRoot ? resumeFrom : nil).map { path in
            let ck = try restorePreference(path: path, adapters: adapters, optimizer: optimizer, yaml: yaml, totalSteps: totalSteps,
                                           dataIdentity: dataIdentity, acceptDataChange: acceptDataChange)
            events.log("resuming from \(path) (step \(ck.step) of \(totalSteps))")
            return ck
        }
        if resume && world.size > 1 {
            resumed = try shareCheckpoint(resumed, world: world, adapters: adapters, optimizer: optimizer, yaml: yaml)
        }
        let metrics = world.isRoot ? try MetricsLog(path: outDir + "/metrics.jsonl", resumeAfter: resumed?.step, finalStep: totalSteps) : nil
        try recordRunOptions(metrics)
        let run = PreferenceRun(config: c, configPath: configPath, outDir: outDir, model: model, adapters: adapters, refAdapters: refAdapters,
                                optimizer: optimizer, step: try PreferenceStep(model: model, state: state), plan: plan, totalSteps: totalSteps,
                                metrics: metrics,
                                yaml: yaml, dataIdentity: dataIdentity, events: events, world: world)
        if world.isRoot { try AtomicFile.write(Data(configFileText(yaml).utf8), to: outDir + "/config.yaml") }
        return try run.train(valid: data.valid, test: data.test, resumed: resumed)
    }

    /// Every rank must train the same thing: same resolved config, same files (as SFT checks).
    private func requireSameRun(_ c: TrainConfig, yaml: String, world: Collective, events: TrainerEvents) throws {
        let files = [c.model] + c.data.trainFiles.map(\.path) + [c.data.valid, c.data.test].compactMap { $0 }
        var h = FileDigest.of(paths: files)
        for b in yaml.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        try world.requireSame(h, "resolved config, model and data files")
        events.log("data parallel: \(world.size) ranks (Open MPI); each step's \(c.training.gradAccum) micro-batches are shared out, rank r taking r, r + \(world.size), ...")
    }

    /// What preference training does not do yet, refused with the key to change.
    func requirePreferenceSupport() throws {
        let c = config, m = c.training.method.rawValue
        if c.data.trainFiles.contains(where: { $0.weight != 1 }) {
            throw MoETuneError.config(path: configPath, key: "data.train", message: "training.method \(m) takes its files whole: remove the weights")
        }
        if c.routerMode == .full {
            throw MoETuneError.config(path: configPath, key: "moe.router", message: "full router training has no adapter-off reference; use lora or frozen with \(m)")
        }
        if let select = c.lora.experts.select {
            throw MoETuneError.config(path: configPath, key: "lora.experts.select",
                                      message: "\(select.rawValue) scores experts on SFT examples; with \(m) use select: all")
        }
    }

    /// The training pairs (every data.train file), and the validation pairs (data.valid, or
    /// data.valid_split held out of the training pairs as SFT holds out examples) and test pairs.
    private func loadPreferenceData(_ loaded: LoadedModel, events: TrainerEvents)
        throws -> (train: [PreferenceExample], valid: [PreferenceExample]?, test: [PreferenceExample]?) {
        let c = config, tc = c.training
        var chat: ChatEncoder?
        if case let .jinja(renderer) = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model) {
            chat = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        }
        func load(_ path: String, _ split: String) throws -> [PreferenceExample] {
            let ds = try PreferenceDataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                                maxSeqLen: tc.maxSeqLen, chat: chat)
            events.log("\(split): \(ds.examples.count) pairs from \(path)" + (ds.truncated > 0 ? "; \(ds.truncated) with completions cut to max_seq_len \(tc.maxSeqLen)" : ""))
            return ds.examples
        }
        var train = try c.data.trainFiles.flatMap { try load($0.path, "train") }
        var valid = try c.data.valid.map { try load($0, "valid") }
        if let split = c.data.validSplit {
            let held = try ValidSplitter.heldOut(split, total: train.count, configPath: configPath)
            let (keep, hold) = ValidSplitter.split(total: train.count, held: held, seed: UInt64(bitPattern: Int64(tc.seed)))
            valid = hold.map { train[$0] }
            train = keep.map { train[$0] }
            events.log("valid: \(hold.count) pairs held out of data.train (valid_split); \(train.count) left to train on")
        }
        return (train, valid, try c.data.test.map { try load($0, "test") })
    }

    /// Refuses a micro-batch of `rows` sequences of up to `seq` tokens whose activations with the
    /// whole head ([rows x seq, V] logits: DPO/ORPO and GRPO keep every row's) would not fit in
    /// the machine's memory or the process's limits. `batch` says what the rows are, `lower`
    /// which keys to lower.
    func requireWholeHeadFits(_ model: Transformer, rows: Int, seq: Int, loraRank: Int, batch: String, lower: String) throws {
        try requireActivationsFit(model, rows: rows, seq: seq, loraRank: loraRank, headChunkRows: nil,
                                  batch: "a micro-batch of \(batch)", key: "training.batch_size", lower: lower)
    }

    /// The checkpoint at `path` restored, after the checks SFT's resume makes.
    func restorePreference(path: String, adapters: AdapterSet, optimizer: Optimizer, yaml: String, totalSteps: Int,
                                   dataIdentity: [TrainCheckpoint.FileIdentity], acceptDataChange: Bool) throws -> TrainCheckpoint {
        let recorded = try TrainCheckpoint.verify(path: path)
        return try TrainCheckpoint.restore(path: path, adapters: adapters, optimizer: optimizer) { ck in
            let changed = ConfigFingerprint.changes(from: ck.configYAML, to: yaml)
            guard changed.isEmpty, ck.configHash == ConfigFingerprint.hash(yaml) else {
                throw MoETuneError.config(path: configPath, key: changed.first.map { String($0.prefix { $0 != ":" }) } ?? "config",
                    message: "differs from the checkpoint \(path) it would resume (\(changed.joined(separator: "; "))); resume with the old values or start a new run")
            }
            guard totalSteps >= ck.step else {
                throw MoETuneError.config(path: configPath, key: "training.max_steps",
                                          message: "gives \(totalSteps) steps, but the checkpoint \(path) is at step \(ck.step); it can only be extended")
            }
            if let first = TrainCheckpoint.dataChanges(recorded: recorded ?? dataIdentity, now: dataIdentity).first, !acceptDataChange {
                throw MoETuneError.file(path: first.path, message: "\(first.change) since the checkpoint \(path) was made from it; restore it, or pass --accept-data-change")
            }
        }
    }
}

/// One preference run once everything is loaded: the steps, evaluations and checkpoints.
final class PreferenceRun {
    let config: TrainConfig, configPath: String, outDir: String
    let model: Transformer, adapters: AdapterSet, refAdapters: AdapterSet?, optimizer: Optimizer
    let step: PreferenceStep, plan: PreferencePlan, objective: PreferenceObjective
    let totalSteps: Int, schedule: LearningRateSchedule
    /// Rank 0 alone writes into out_dir (metrics nil elsewhere).
    let metrics: MetricsLog?, yaml: String, dataIdentity: [TrainCheckpoint.FileIdentity], events: TrainerEvents
    let world: Collective
    /// precompute_ref: every training pair's reference log-probs (by pair index).
    var cached: [(chosen: Double, rejected: Double)]?
    /// Parameters of the last step whose loss was finite, restored if training diverges.
    let lastGood: FloatBuffer
    var lastCheckpoint: String?
    var firstValid: Double?, lastValid: Double?

    init(config c: TrainConfig, configPath: String, outDir: String, model: Transformer, adapters: AdapterSet, refAdapters: AdapterSet?,
         optimizer: Optimizer, step: PreferenceStep, plan: PreferencePlan, totalSteps: Int, metrics: MetricsLog?, yaml: String,
         dataIdentity: [TrainCheckpoint.FileIdentity], events: TrainerEvents, world: Collective) {
        (config, self.configPath, self.outDir, self.model, self.adapters, self.refAdapters) = (c, configPath, outDir, model, adapters, refAdapters)
        (self.optimizer, self.step, self.plan, self.totalSteps, self.metrics) = (optimizer, step, plan, totalSteps, metrics)
        (self.yaml, self.dataIdentity, self.events, self.world) = (yaml, dataIdentity, events, world)
        objective = PreferenceObjective(method: c.training.method, dpo: c.dpo, orpoBeta: c.orpo.beta)
        schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                        minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)
        lastGood = FloatBuffer(count: adapters.store.count)
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
    }

    /// Steps from the checkpoint `resumed` (or the start) to the end or a stop; valid evaluated
    /// at the start, every eval_every steps and at the end, test at the end.
    func train(valid: [PreferenceExample]?, test: [PreferenceExample]?, resumed: TrainCheckpoint?) throws -> TrainSummary {
        let tc = config.training
        // precompute_ref: every pair's reference log-probs once, in the micro-batch of the first
        // epoch that holds it (so a one-epoch run sees the numbers the in-step reference gives).
        if objective.needsReference && config.dpo.precomputeRef {
            cached = try plan.precomputeReference(step, adapters: refAdapters)
            events.log("reference log-probabilities of \(plan.examples.count) pairs computed once (dpo.precompute_ref)")
        }
        (firstValid, lastValid) = (resumed?.firstValidLoss, resumed?.lastValidLoss)
        if let valid, resumed == nil {
            firstValid = try evaluate(valid, "valid", step: 0, limit: tc.evalBatches)
            lastValid = firstValid
        }
        var position = (micro: resumed?.microIndex ?? 0, tokens: resumed?.trainedTokens ?? 0)
        let start = Date(), elapsedBefore = resumed?.elapsed ?? 0
        var stoppedAt: Int?
        for s in stride(from: (resumed?.step ?? 0) + 1, through: totalSteps, by: 1) {
            let stepTokens = try trainStep(s, first: position.micro, elapsed: { elapsedBefore + Date().timeIntervalSince(start) }, tokensBefore: position.tokens)
            position = (position.micro + tc.gradAccum, position.tokens + stepTokens)
            if let valid, tc.evalEvery > 0, s % tc.evalEvery == 0, s != totalSteps {
                lastValid = try evaluate(valid, "valid", step: s, limit: tc.evalBatches)
            }
            // Every rank stops at the same step (a signal reaches ranks at different moments).
            let stop = try world.any(events.shouldStop())
            if stop || s == totalSteps || (tc.saveEvery > 0 && s % tc.saveEvery == 0) {
                try checkpoint(step: s, microIndex: position.micro, trainedTokens: position.tokens, elapsed: elapsedBefore + Date().timeIntervalSince(start))
            }
            if stop && s != totalSteps { stoppedAt = s; break }
        }
        var testLoss: Double?
        if stoppedAt == nil {
            if let valid { lastValid = try evaluate(valid, "valid", step: totalSteps, limit: nil) }
            testLoss = try test.map { try evaluate($0, "test", step: totalSteps, limit: nil) }
        }
        guard world.isRoot else {
            return TrainSummary(steps: stoppedAt ?? totalSteps, seconds: Date().timeIntervalSince(start), trainedTokens: position.tokens,
                                firstValidLoss: firstValid, lastValidLoss: lastValid, testLoss: testLoss, outDir: outDir, firstRouting: nil,
                                lastRouting: nil, stoppedAt: stoppedAt, checkpoint: nil, resumedFrom: resumed?.step)
        }
        try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir)
        try RunReport.write(outDir: outDir, title: "moe-tune \(tc.method.rawValue): \((config.model as NSString).lastPathComponent) → \(outDir)")
        return TrainSummary(steps: stoppedAt ?? totalSteps, seconds: Date().timeIntervalSince(start), trainedTokens: position.tokens,
                            firstValidLoss: firstValid, lastValidLoss: lastValid, testLoss: testLoss, outDir: outDir, firstRouting: nil,
                            lastRouting: nil, stoppedAt: stoppedAt, checkpoint: lastCheckpoint, resumedFrom: resumed?.step)
    }

    /// Step `s` over micro-batches first..<first + grad_accum: gradients, clipping, the update,
    /// its metrics line. Returns the completion tokens it trained on.
    func trainStep(_ s: Int, first: Int, elapsed: () -> Double, tokensBefore: Int) throws -> Int {
        let stepStart = Date(), c = config, n = c.training.gradAccum
        let batches = (first..<(first + n)).map { plan.microBatch($0) }
        let pairs = batches.reduce(0) { $0 + $1.batch.pairs }
        // This rank's share of the step: micro-batches first + rank, first + rank + ranks, ...
        let mine = stride(from: world.rank, to: n, by: world.size).map { (first + $0, batches[$0].indices, batches[$0].batch) }
        let (results, aux) = try step.accumulate(mine, pairs: pairs, nllTokens: PreferenceObjective.nllTokens(batches.map(\.batch)),
                                                 microBatches: n, adapters: adapters, reference: refAdapters, cached: cached, objective: objective)
        var totals = objective.totals(results) + [aux]
        if world.size > 1 {
            try world.sum(adapters.store.grads.pointer, count: adapters.store.count)
            totals = try world.sum(totals)
        }
        let traffic = world.takeTraffic()
        let (loss, values) = objective.summary(totals: Array(totals.dropLast()))
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
        let tokens = batches.reduce(0) { $0 + $1.batch.completion.reduce(0) { $0 + ($1 ? 1 : 0) } }
        let seconds = max(Date().timeIntervalSince(stepStart), 1e-9)
        if s % c.training.logEvery == 0 || s == totalSteps {
            var line: [String: Any] = ["type": "step", "step": s, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens,
                                       "tokens_per_s": Double(tokens) / seconds, "elapsed_s": elapsed(), "pairs": pairs]
            for (k, v) in values { line[k] = v }
            if model.config.isMoE { line["aux_loss"] = totals.last! }
            if world.size > 1 { line["ranks"] = world.size; line["allreduce_s"] = traffic.seconds; line["allreduce_bytes"] = traffic.bytes }
            try metrics?.write(line)
        }
        events.step(StepRecord(step: s, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: tokens,
                               tokensPerSecond: Double(tokens) / seconds, elapsed: elapsed()))
        return tokens
    }

    /// The last good parameters back and saved; the error to throw.
    func diverged(_ message: String) throws -> MoETuneError {
        adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
        if world.isRoot { try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir) }
        return MoETuneError.config(path: configPath, key: "optimizer.lr", message: message)
    }

    func checkpoint(step s: Int, microIndex: Int, trainedTokens: Int, elapsed: Double) throws {
        guard world.isRoot else { return }
        let ck = TrainCheckpoint(step: s, microIndex: microIndex, optimizerStep: optimizer.t, trainedTokens: trainedTokens,
                                 elapsed: elapsed, firstValidLoss: firstValid, lastValidLoss: lastValid,
                                 configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
        lastCheckpoint = try ck.write(outDir: outDir, adapters: adapters, optimizer: optimizer, family: model.family,
                                      baseModel: config.model, keep: config.training.keepCheckpoints, data: dataIdentity)
        if s != totalSteps { try PEFTAdapter.save(adapters, family: model.family, baseModel: config.model, to: outDir) }
    }

    /// An eval line (split, loss, pairs, TRL's metrics) over `pairs` (the first limit x batch_size).
    func evaluate(_ pairs: [PreferenceExample], _ split: String, step s: Int, limit: Int?) throws -> Double {
        let bs = config.training.batchSize
        let subset = limit.map { Array(pairs.prefix($0 * bs)) } ?? pairs
        let (loss, values) = try step.evaluate(subset, batchSize: bs, adapters: adapters, reference: refAdapters, objective: objective)
        var line: [String: Any] = ["type": "eval", "step": s, "split": split, "loss": loss, "pairs": subset.count]
        for (k, v) in values { line[k] = v }
        try metrics?.write(line)
        events.log("\(split) at step \(s): loss \(String(format: "%.4f", loss))"
            + (values["rewards/accuracies"].map { ", reward accuracy \(String(format: "%.3f", $0))" } ?? ""))
        return loss
    }
}

/// Micro-batch m of a preference run: the pairs of batch m % perEpoch of epoch m / perEpoch
/// (trainingBatches over the pairs' longer sequence: a seeded shuffle, length-sorted windows).
package final class PreferencePlan {
    package let examples: [PreferenceExample]
    package let batchSize: Int
    package let seed: UInt64
    package let orpo: Bool
    package let perEpoch: Int
    private var cached: (epoch: Int, batches: [[Int]])?

    package init(examples: [PreferenceExample], batchSize: Int, seed: UInt64, orpo: Bool) {
        self.examples = examples; self.batchSize = batchSize; self.seed = seed; self.orpo = orpo
        perEpoch = (examples.count + batchSize - 1) / batchSize
    }

    package func indices(epoch: Int) -> [[Int]] {
        if let cached, cached.epoch == epoch { return cached.batches }
        let batches = trainingBatches(lengths: examples.map(\.longest), batchSize: batchSize, seed: seed, epoch: epoch)
        cached = (epoch, batches)
        return batches
    }

    package func microBatch(_ m: Int) -> (indices: [Int], batch: PreferenceBatch) {
        let idx = indices(epoch: m / perEpoch)[m % perEpoch]
        return (idx, PreferenceBatch(idx.map { examples[$0] }, chosenPromptTargets: orpo))
    }

    /// Every pair's reference log-probs, from the micro-batches of epoch 0.
    package func precomputeReference(_ step: PreferenceStep, adapters: AdapterSet?) throws -> [(chosen: Double, rejected: Double)] {
        var out = [(chosen: Double, rejected: Double)](repeating: (0, 0), count: examples.count)
        for idx in indices(epoch: 0) {
            let ref = try step.reference(PreferenceBatch(idx.map { examples[$0] }, chosenPromptTargets: orpo), adapters: adapters)
            for (i, r) in zip(idx, ref) { out[i] = r }
        }
        return out
    }
}
