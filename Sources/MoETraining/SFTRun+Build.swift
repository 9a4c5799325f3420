import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

extension SFTRun {
    /// Step 3: the step plan (micro-batches of similar length, or packed rows, grad_accum of
    /// them a step; micro-batch m of the run is a function of the seed), the adapters (init_adapter's,
    /// or new ones; ESFT's expert selection first) and the optimizer over their parameters.
    /// Refuses a batch whose activations would not fit before anything large is built.
    func buildOptimizer(_ data: Datasets) throws -> Trainable {
        let c = config, tc = c.training
        if c.loraSpec.targets.contains(.sharedExpert), !model.layers.contains(where: { $0.sharedExpert != nil }) {
            throw MoETuneError.config(path: configPath, key: "lora.targets",
                message: "shared_expert, but \(model.config.family.name) models have no shared expert")
        }
        let plan = BatchPlan(examples: data.train.examples, mix: data.mix, batchSize: tc.batchSize, packing: tc.packingPlan,
                             seed: UInt64(bitPattern: Int64(tc.seed)))
        if tc.initAdapter == nil {
            // Before the expert-selection pass and the adapters, with the config's ranks (checked
            // again in buildStates with the adapters' own).
            let rank = max(c.loraSpec.rank, c.loraSpec.overrides.values.map(\.rank).max() ?? 0)
            let whole = c.loraSpec.targets.contains(.head) && c.loraSpec.dropout > 0
            try requireActivationsFit(plan, loraRank: rank,
                                      headChunkRows: whole ? nil : ForwardState.defaultHeadChunkRows(vocab: model.config.vocabSize))
        }
        let spec = try trainer.resolvedLoRASpec(c, model: model, train: data.train, outDir: outDir, root: root, events: events)
        let adapters = try trainer.makeAdapters(model: model, config: c, spec: spec, events: events)
        return Trainable(plan: plan, adapters: adapters, optimizer: Trainer.makeOptimizer(c, store: adapters.store))
    }

    /// Refuses the plan's largest micro-batch when its activations would not fit (Trainer's check,
    /// with the batch settings named).
    func requireActivationsFit(_ plan: BatchPlan, loraRank: Int, headChunkRows: Int?) throws {
        let tc = config.training
        // Buffers are sized from the data that is batched, not from the configured maxima.
        let (rows, longest) = plan.capacity
        try trainer.requireActivationsFit(model, rows: rows, seq: longest, loraRank: loraRank, headChunkRows: headChunkRows,
                                          batch: "a batch of \(rows) sequences of up to \(longest) tokens",
                                          key: tc.packingPlan != nil && tc.batchTokens != nil ? "training.batch_tokens" : "training.batch_size",
                                          lower: "training.batch_size, training.batch_tokens or training.max_seq_len")
    }

    /// Step 4: the number of steps (max_steps, or epochs of the plan's micro-batches) and the
    /// learning-rate schedule over them.
    func planSteps(_ data: Datasets, plan: BatchPlan) throws -> StepPlan {
        let c = config, tc = c.training
        let perEpoch = plan.perEpoch
        let stepsFromEpochs = (Double(perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up)
        guard tc.maxSteps != nil || stepsFromEpochs <= Double(TrainConfig.limits.maxSteps) else {
            throw MoETuneError.config(path: configPath, key: "training.epochs",
                                      message: "\(tc.epochs ?? 1) epochs of \(perEpoch) batches are \(stepsFromEpochs) steps, more than \(TrainConfig.limits.maxSteps)")
        }
        let totalSteps = tc.maxSteps ?? max(1, Int(stepsFromEpochs))
        if let packing = tc.packingPlan {
            let real = data.train.examples.reduce(0) { $0 + $1.tokens.count }
            events.log("packing: \(data.train.examples.count) examples into \(perEpoch) micro-batches of up to \(packing.rows) rows of \(packing.rowTokens) tokens (\(real) tokens an epoch before mixing)")
        }
        let schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                            minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)
        return StepPlan(totalSteps: totalSteps, schedule: schedule)
    }

    /// Step 5: the forward and backward buffers for the plan's largest micro-batch. The head
    /// goes in row chunks (no [N, V] logits), its backward taken in the forward pass; whole
    /// when a head adapter has dropout. The estimate counts the same buffers.
    func buildStates(_ t: Trainable) throws -> (state: ForwardState, grads: BackwardState) {
        let adapters = t.adapters, mc = model.config
        let headChunkRows = adapters.head == nil || adapters.dropout == nil ? ForwardState.defaultHeadChunkRows(vocab: mc.vocabSize) : nil
        try requireActivationsFit(t.plan, loraRank: adapters.maxRank, headChunkRows: headChunkRows)
        let (rows, longest) = t.plan.capacity
        let state = ForwardState(config: mc, batch: rows, seq: longest, training: true,
                                 loraRank: adapters.maxRank, jitter: model.moe.jitter > 0, headChunkRows: headChunkRows,
                                 recompute: config.training.recompute == .layers)
        state.scoredOnly = true
        let grads = BackwardState(for: state, config: mc)
        adapters.dropout?.reserve(rows * longest * max(mc.hiddenSize, mc.intermediateSize, mc.expertIntermediateSize, mc.sharedExpertIntermediateSize, mc.qDim))
        return (state, grads)
    }

    /// Step 6: restore or start. With `path` (rank 0 of a resumed run), parameters, optimizer
    /// state and position from that checkpoint, once its manifest vouches for its files and
    /// the training data it was made from; shared with the other ranks. Then the metrics log
    /// (continued after the checkpoint's step), the run options and out_dir/config.yaml.
    func restoreOrStart(from path: String?, resume: Bool, acceptDataChange: Bool, _ t: Trainable, totalSteps: Int) throws -> Start {
        let yaml = config.resolvedYAML()
        let dataIdentity = root ? try TrainCheckpoint.identify(data: config.data.trainFiles.map(\.path)) : []
        var resumed: TrainCheckpoint?
        var dataChanges: [(path: String, change: String)] = []
        if root, let path {
            (resumed, dataChanges) = try restore(path, t, yaml: yaml, dataIdentity: dataIdentity, totalSteps: totalSteps,
                                                 acceptDataChange: acceptDataChange)
        }
        if resume && world.size > 1 {
            resumed = try trainer.shareCheckpoint(resumed, world: world, adapters: t.adapters, optimizer: t.optimizer, yaml: yaml)
        }
        let metrics = root ? try MetricsLog(path: outDir + "/metrics.jsonl", resumeAfter: resumed?.step, finalStep: totalSteps) : nil
        try trainer.recordRunOptions(metrics)
        if let ck = resumed, !dataChanges.isEmpty {
            events.log("data changed since checkpoint step \(ck.step): " + dataChanges.map { "\($0.path) \($0.change)" }.joined(separator: "; ")
                + "; continuing on the edited data (--accept-data-change)")
            try metrics?.write(["type": "data_change", "resumed_after_step": ck.step, "accepted": true,
                                "files": dataChanges.map { ["path": $0.path, "change": $0.change] }])
        }
        if root { try AtomicFile.write(Data(trainer.configFileText(yaml).utf8), to: outDir + "/config.yaml") }
        return Start(resumed: resumed, metrics: metrics, yaml: yaml, dataIdentity: dataIdentity)
    }

    /// The checkpoint at `path` into `t`, refused when the config differs (beyond what may
    /// change), when the run would be shorter than the checkpoint, or when the training data
    /// changed without `acceptDataChange`; with the data changes accepted.
    func restore(_ path: String, _ t: Trainable, yaml: String, dataIdentity: [TrainCheckpoint.FileIdentity], totalSteps: Int,
                 acceptDataChange: Bool) throws -> (TrainCheckpoint, [(path: String, change: String)]) {
        let tc = config.training
        let recordedData = try TrainCheckpoint.verify(path: path)
        if recordedData == nil { events.log("note: \(path) has no manifest (an older moe-tune wrote it): its files and data are not verified") }
        var dataChanges: [(path: String, change: String)] = []
        let ck = try TrainCheckpoint.restore(path: path, adapters: t.adapters, optimizer: t.optimizer) { ck in
            let changed = ConfigFingerprint.changes(from: ck.configYAML, to: yaml)
            guard changed.isEmpty, ck.configHash == ConfigFingerprint.hash(yaml) else {
                throw MoETuneError.config(path: configPath, key: changed.first.map { String($0.prefix { $0 != ":" }) } ?? "config",
                    message: "differs from the checkpoint \(path) it would resume (\(changed.joined(separator: "; "))); only \(ConfigFingerprint.mayChange.sorted().joined(separator: ", ")) may change; resume with the old values or start a new run")
            }
            guard totalSteps >= ck.step else {
                throw MoETuneError.config(path: configPath, key: tc.maxSteps != nil ? "training.max_steps" : "training.epochs",
                    message: "gives \(totalSteps) steps, but the checkpoint \(path) is at step \(ck.step); it can only be extended")
            }
            dataChanges = TrainCheckpoint.dataChanges(recorded: recordedData ?? dataIdentity, now: dataIdentity)
            if let first = dataChanges.first, !acceptDataChange {
                throw MoETuneError.file(path: first.path, message: "\(first.change) since the checkpoint \(path) was made from it"
                    + (dataChanges.count > 1 ? " (and \(dataChanges.count - 1) more: \(dataChanges.dropFirst().map(\.path).joined(separator: ", ")))" : "")
                    + "; --resume continues only on the data a run was made from: restore it, or pass --accept-data-change to continue on the edited data")
            }
        }
        events.log("resuming from \(path) (step \(ck.step) of \(totalSteps))")
        return (ck, dataChanges)
    }
}
