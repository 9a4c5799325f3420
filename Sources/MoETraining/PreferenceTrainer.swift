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
    func trainPreference(outDir: String, resumeFrom: String?, acceptDataChange: Bool, events: TrainerEvents,
                         world: Collective) throws -> TrainSummary {
        let c = config, tc = c.training
        try requirePreferenceSupport(world: world)
        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization, base: c.baseDType)
        let model = loaded.model
        try configureMoE(model)
        JSONL.maxLineBytes = c.data.maxLineBytes
        defer { JSONL.maxLineBytes = JSONL.defaultMaxLineBytes }
        var chat: ChatEncoder?
        if case let .jinja(renderer) = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model) {
            chat = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        }
        var examples: [PreferenceExample] = []
        for f in c.data.trainFiles {
            let ds = try PreferenceDataset.load(path: f.path, tokenizer: loaded.tokenizer, vocabSize: model.config.vocabSize,
                                                maxSeqLen: tc.maxSeqLen, chat: chat)
            events.log("train: \(ds.examples.count) pairs from \(f.path)" + (ds.truncated > 0 ? "; \(ds.truncated) with completions cut to max_seq_len \(tc.maxSeqLen)" : ""))
            examples += ds.examples
        }
        let adapters = try makeAdapters(model: model, config: c, events: events)
        let refAdapters = try tc.initAdapter.map { try PEFTAdapter.load(directory: $0, model: model) }
        let optimizer = Trainer.makeOptimizer(c, store: adapters.store)
        let objective = PreferenceObjective(method: tc.method, dpo: c.dpo, orpoBeta: c.orpo.beta)
        let plan = PreferencePlan(examples: examples, batchSize: tc.batchSize, seed: UInt64(bitPattern: Int64(tc.seed)),
                                  orpo: tc.method == .orpo)
        let stepsFromEpochs = (Double(plan.perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up)
        let totalSteps = tc.maxSteps ?? max(1, Int(min(stepsFromEpochs, Double(TrainConfig.limits.maxSteps))))
        let schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                            minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)
        let longest = examples.map(\.longest).max() ?? 1
        let state = ForwardState(config: model.config, batch: 2 * min(tc.batchSize, examples.count), seq: longest, training: true,
                                 loraRank: max(adapters.maxRank, refAdapters?.maxRank ?? 0), jitter: model.moe.jitter > 0, headChunkRows: nil)
        state.scoredOnly = true
        let step = try PreferenceStep(model: model, state: state)
        let mc = model.config
        adapters.dropout?.reserve(state.batchCapacity * longest * max(mc.hiddenSize, mc.intermediateSize, mc.expertIntermediateSize, mc.sharedExpertIntermediateSize, mc.qDim))
        events.log("\(tc.method.rawValue): \(examples.count) pairs, \(plan.perEpoch) micro-batches of up to \(tc.batchSize) pairs an epoch, \(totalSteps) steps")

        // Resume: as SFT's (config, data and position checked against the checkpoint).
        let yaml = c.resolvedYAML()
        let dataIdentity = try TrainCheckpoint.identify(data: c.data.trainFiles.map(\.path))
        var resumed: TrainCheckpoint?
        if let path = resumeFrom {
            resumed = try restorePreference(path: path, adapters: adapters, optimizer: optimizer, yaml: yaml, totalSteps: totalSteps,
                                            dataIdentity: dataIdentity, acceptDataChange: acceptDataChange)
            events.log("resuming from \(path) (step \(resumed!.step) of \(totalSteps))")
        }
        let metrics = try MetricsLog(path: outDir + "/metrics.jsonl", resumeAfter: resumed?.step, finalStep: totalSteps)
        try AtomicFile.write(Data(yaml.utf8), to: outDir + "/config.yaml")

        // precompute_ref: every pair's reference log-probs once, in the micro-batch of the first
        // epoch that holds it (so a one-epoch run sees the numbers the in-step reference gives).
        var cached: [(chosen: Double, rejected: Double)]?
        if objective.needsReference && c.dpo.precomputeRef {
            cached = try plan.precomputeReference(step, adapters: refAdapters)
            events.log("reference log-probabilities of \(examples.count) pairs computed once (dpo.precompute_ref)")
        }
        var lastCheckpoint: String?
        var microIndex = resumed?.microIndex ?? 0
        var trainedTokens = resumed?.trainedTokens ?? 0
        let start = Date(), elapsedBefore = resumed?.elapsed ?? 0
        var stoppedAt: Int?
        for s in stride(from: (resumed?.step ?? 0) + 1, through: totalSteps, by: 1) {
            let stepStart = Date()
            let group = Array(microIndex..<(microIndex + tc.gradAccum))
            let batches = group.map { plan.microBatch($0) }
            let pairs = batches.reduce(0) { $0 + $1.batch.pairs }
            let nllTokens = PreferenceObjective.nllTokens(batches.map(\.batch))
            adapters.store.zeroGrads()
            adapters.dropout?.active = true
            model.moe.training = true
            var results: [PreferenceMicroResult] = []
            for (m, mb) in zip(group, batches) {
                adapters.dropout?.step = m
                model.moe.step = m
                var ref: [(chosen: Double, rejected: Double)]?
                if objective.needsReference {
                    ref = try cached.map { cache in mb.indices.map { cache[$0] } } ?? step.reference(mb.batch, adapters: refAdapters)
                }
                results.append(try step.run(mb.batch, adapters: adapters, objective: objective, reference: ref,
                                            pairScale: 1 / Double(pairs), nllScale: 1 / Double(max(nllTokens, 1)),
                                            auxScale: 1 / Float(tc.gradAccum)))
            }
            microIndex += tc.gradAccum
            let (loss, values) = objective.summary(results)
            let norm = clipGradientNorm(adapters.store, maxNorm: c.optimizer.gradClip.map(Float.init))
            guard loss.isFinite, norm.isFinite else {
                throw MoETuneError.invalid("training diverged at step \(s): loss \(loss), gradient norm \(norm); try a lower optimizer.lr")
            }
            let lr = schedule.lr(step: s)
            optimizer.step(lr: Float(lr))
            let tokens = batches.reduce(0) { $0 + $1.batch.completion.reduce(0) { $0 + ($1 ? 1 : 0) } }
            trainedTokens += tokens
            let elapsed = elapsedBefore + Date().timeIntervalSince(start)
            let seconds = max(Date().timeIntervalSince(stepStart), 1e-9)
            if s % tc.logEvery == 0 || s == totalSteps {
                var line: [String: Any] = ["type": "step", "step": s, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": tokens,
                                           "tokens_per_s": Double(tokens) / seconds, "elapsed_s": elapsed, "pairs": pairs]
                for (k, v) in values { line[k] = v }
                if model.config.isMoE { line["aux_loss"] = state.auxLoss }
                try metrics.write(line)
            }
            events.step(StepRecord(step: s, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: tokens,
                                   tokensPerSecond: Double(tokens) / seconds, elapsed: elapsed))
            let stop = events.shouldStop()
            if stop || s == totalSteps || (tc.saveEvery > 0 && s % tc.saveEvery == 0) {
                let ck = TrainCheckpoint(step: s, microIndex: microIndex, optimizerStep: optimizer.t, trainedTokens: trainedTokens,
                                         elapsed: elapsed, firstValidLoss: nil, lastValidLoss: nil,
                                         configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
                lastCheckpoint = try ck.write(outDir: outDir, adapters: adapters, optimizer: optimizer, family: model.family,
                                              baseModel: c.model, keep: tc.keepCheckpoints, data: dataIdentity)
                if s != totalSteps { try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir) }
            }
            if stop && s != totalSteps { stoppedAt = s; break }
        }
        try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir)
        try RunReport.write(outDir: outDir, title: "moe-tune \(tc.method.rawValue): \((c.model as NSString).lastPathComponent) → \(outDir)")
        return TrainSummary(steps: stoppedAt ?? totalSteps, seconds: Date().timeIntervalSince(start), trainedTokens: trainedTokens,
                            firstValidLoss: nil, lastValidLoss: nil, testLoss: nil, outDir: outDir, firstRouting: nil, lastRouting: nil,
                            stoppedAt: stoppedAt, checkpoint: lastCheckpoint, resumedFrom: resumed?.step)
    }

    /// What preference training does not do yet, refused with the key to change.
    private func requirePreferenceSupport(world: Collective) throws {
        let c = config, m = c.training.method.rawValue
        if world.size > 1 { throw MoETuneError.invalid("training.method \(m) runs in one process for now (no MPI data parallelism)") }
        if c.data.valid != nil || c.data.validSplit != nil || c.data.test != nil {
            throw MoETuneError.config(path: configPath, key: c.data.valid != nil ? "data.valid" : c.data.test != nil ? "data.test" : "data.valid_split",
                                      message: "training.method \(m) has no evaluation yet: remove it")
        }
        if c.data.trainFiles.contains(where: { $0.weight != 1 }) {
            throw MoETuneError.config(path: configPath, key: "data.train", message: "training.method \(m) takes its files whole: remove the weights")
        }
        if c.routerMode == .full {
            throw MoETuneError.config(path: configPath, key: "moe.router", message: "full router training has no adapter-off reference; use lora or frozen with \(m)")
        }
    }

    /// The checkpoint at `path` restored, after the checks SFT's resume makes.
    private func restorePreference(path: String, adapters: AdapterSet, optimizer: Optimizer, yaml: String, totalSteps: Int,
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
