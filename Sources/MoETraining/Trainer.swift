import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// What the trainer reports as it goes; the command-line layer renders it.
public struct TrainerEvents {
    public var log: (String) -> Void = { _ in }
    public var step: (StepRecord) -> Void = { _ in }
    public var evaluation: (String, Int, EvalResult) -> Void = { _, _, _ in }
    /// Polled after every step: true asks the trainer to stop there, write a checkpoint
    /// and the adapter, and return (a signal handler sets it).
    public var shouldStop: () -> Bool = { false }
    public init() {}
}

public struct StepRecord: Sendable {
    public var step: Int
    public var totalSteps: Int
    public var loss: Double
    public var lr: Double
    public var gradNorm: Double
    public var tokens: Int
    public var tokensPerSecond: Double
    public var elapsed: Double
    /// Tokens the step's forward passes computed (rows x row length, padding included) and
    /// the real (non-padding) tokens among them.
    public var computedTokens = 0
    public var realTokens = 0
    /// Share of the computed tokens that are padding.
    public var paddingShare: Double { computedTokens > 0 ? Double(computedTokens - realTokens) / Double(computedTokens) : 0 }
    /// Seconds of the step (0 when not measured).
    public var seconds = 0.0
    /// Tokens the forward passes computed per second (`tokensPerSecond` counts the scored
    /// ones: with prompts masked out, a step computes many more than it scores).
    public var computedTokensPerSecond: Double { seconds > 0 ? Double(computedTokens) / seconds : 0 }
    /// Share of the computed tokens that carry a prediction counted in the loss.
    public var targetShare: Double { computedTokens > 0 ? Double(tokens) / Double(computedTokens) : 0 }
}

public struct TrainSummary: Sendable {
    public var steps: Int
    public var seconds: Double
    public var trainedTokens: Int
    public var firstValidLoss: Double?
    public var lastValidLoss: Double?
    public var testLoss: Double?
    public var outDir: String
    /// Expert load at the first and the last validation (MoE models with a valid set).
    public var firstRouting: RoutingStatistics?
    public var lastRouting: RoutingStatistics?
    /// The step training stopped at when `shouldStop` asked for it (nil: ran to the end).
    public var stoppedAt: Int?
    /// The newest checkpoint written (nil: none).
    public var checkpoint: String?
    /// The step a resumed run continued from.
    public var resumedFrom: Int?
}

/// LoRA fine-tuning of a frozen base: forward, hand-written backward, clipping,
/// optimizer and schedule over batches of similar length, with evaluation, metrics and
/// PEFT-format checkpoints in out_dir.
public final class Trainer {
    public let config: TrainConfig
    public let configPath: String
    /// The process's run options as they act (RunOptions.effective()), recorded at the end of
    /// out_dir/config.yaml (as comments) and as metrics.jsonl's first line of each start or
    /// resume; empty: not recorded. Never part of the config hash: they do not block --resume.
    public var runOptions: [(key: String, value: Any)] = []

    public init(config: TrainConfig, configPath: String) {
        self.config = config
        self.configPath = configPath
    }

    /// out_dir/config.yaml: the resolved config, then the run options as comments.
    func configFileText(_ yaml: String) -> String {
        runOptions.isEmpty ? yaml : yaml + (yaml.hasSuffix("\n") ? "" : "\n") + RunOptions.yamlComment(runOptions)
    }

    /// metrics.jsonl's line for the run options of this start or resume.
    /// Refuses a micro-batch whose activations (MemoryEstimate, with training.recompute as
    /// set) would not fit in the machine's memory or under the process's limits, naming
    /// `key`, the keys to `lower`, and training.recompute: layers when that would fit.
    func requireActivationsFit(_ model: Transformer, rows: Int, seq: Int, loraRank: Int, headChunkRows: Int?,
                               batch: String, key: String, lower: String) throws {
        let estimate = { (recompute: Bool) in
            MemoryEstimate.trainingBytes(config: model.config, rows: rows, seq: seq, headChunkRows: headChunkRows,
                                         recompute: recompute, loraRank: loraRank, jitter: model.moe.jitter > 0)
        }
        let recompute = config.training.recompute == .layers
        if let message = MemoryEstimate.refusal(batch: batch, needed: estimate(recompute), recomputed: recompute ? nil : estimate(true),
                                                lower: lower, room: MemoryEstimate.activationRoom()) {
            throw MoETuneError.config(path: configPath, key: key, message: message)
        }
    }

    func recordRunOptions(_ metrics: MetricsLog?) throws {
        guard !runOptions.isEmpty else { return }
        try metrics?.write(["type": "run_options", "options": RunOptions.json(runOptions)])
    }

    /// Trains; with `resume`, continues from the newest checkpoint in out_dir exactly as
    /// the run would have gone on (bit-identical on the same machine and thread count).
    /// Over several ranks (`world`, data parallel), each step's grad_accum x ranks
    /// micro-batches are shared out (rank r takes r, r + ranks, ...), gradients, losses and
    /// token counts are summed, and every rank takes the same optimizer step: the result is
    /// the single-process run with grad_accum x ranks. Rank 0 alone touches out_dir.
    /// `acceptDataChange` (with `resume`): continue although a training data file changed
    /// since the checkpoint was written (recorded in metrics.jsonl); without it that is refused.
    public func run(overwrite: Bool = false, resume: Bool = false, acceptDataChange: Bool = false, events: TrainerEvents = TrainerEvents(),
                    world: Collective = SingleProcess()) throws -> TrainSummary {
        let outDir = config.training.outDir
        if acceptDataChange && !resume {
            throw MoETuneError.invalid("--accept-data-change goes with --resume: it lets a resumed run continue on training data edited since its checkpoint")
        }
        guard world.isRoot else {
            return try train(outDir: outDir, resume: resume, resumeFrom: nil, acceptDataChange: acceptDataChange, events: events, world: world)
        }
        let lock = try prepareOutDir(outDir, overwrite: overwrite, resume: resume)
        return try withExtendedLifetime(lock) {
            try train(outDir: outDir, resume: resume, resumeFrom: resume ? TrainCheckpoint.list(outDir: outDir).last?.path : nil,
                      acceptDataChange: acceptDataChange, events: events, world: world)
        }
    }

    private func train(outDir: String, resume: Bool, resumeFrom: String?, acceptDataChange: Bool, events: TrainerEvents, world: Collective) throws -> TrainSummary {
        // The run as one process would do it: grad_accum x ranks micro-batches a step. The
        // resolved config.yaml records that figure, so a run resumes on any number of ranks
        // whose product with grad_accum stays the same.
        if config.training.method == .grpo {
            return try trainGRPO(outDir: outDir, resume: resume, resumeFrom: resumeFrom, acceptDataChange: acceptDataChange, events: events, world: world)
        }
        if config.training.method != .sft {
            return try trainPreference(outDir: outDir, resume: resume, resumeFrom: resumeFrom, acceptDataChange: acceptDataChange, events: events, world: world)
        }
        var c = config
        guard c.training.gradAccum * world.size <= TrainConfig.limits.gradAccum else {
            throw MoETuneError.config(path: configPath, key: "training.grad_accum",
                                      message: "\(c.training.gradAccum) x \(world.size) ranks is more than \(TrainConfig.limits.gradAccum) micro-batches a step")
        }
        c.training.gradAccum *= world.size
        let tc = c.training
        let root = world.isRoot

        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization, base: c.baseDType)
        let model = loaded.model
        try configureMoE(model)
        let chat = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model)
        JSONL.maxLineBytes = c.data.maxLineBytes
        defer { JSONL.maxLineBytes = JSONL.defaultMaxLineBytes }
        let options = DataOptions(maxSeqLen: tc.maxSeqLen, trainOnInputs: c.data.trainOnInputs, chat: chat)
        func load(_ path: String, _ split: String) throws -> Dataset {
            let ds = try Dataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: model.config.vocabSize, options: options)
            let empty = ds.examples.filter { $0.countedTokens == 0 }.count
            events.log("\(split): \(ds.examples.count) examples, \(ds.countedTokens) trained-on tokens from \(path)"
                + (ds.truncated > 0 ? "; \(ds.truncated) truncated to max_seq_len \(tc.maxSeqLen)" : "")
                + (empty > 0 ? "; \(empty) have no target tokens left (prompt fills max_seq_len) and add nothing to the loss" : ""))
            guard ds.countedTokens > 0 else {
                throw MoETuneError.file(path: path, message: "no example has a token to train on (all prompts fill max_seq_len \(tc.maxSeqLen)?)")
            }
            return ds
        }
        // Training files, concatenated; with valid_split a seeded part of them is the validation set.
        var train = try load(c.data.trainFiles[0].path, "train")
        var fileOf = [Int](repeating: 0, count: train.examples.count)
        for (i, f) in c.data.trainFiles.enumerated().dropFirst() {
            let ds = try load(f.path, "train")
            train.examples += ds.examples
            train.truncated += ds.truncated
            fileOf += [Int](repeating: i, count: ds.examples.count)
        }
        var valid = try c.data.valid.map { try load($0, "valid") }
        if let split = c.data.validSplit {
            let held = try ValidSplitter.heldOut(split, total: train.examples.count, configPath: configPath)
            let (keep, hold) = ValidSplitter.split(total: train.examples.count, held: held, seed: UInt64(bitPattern: Int64(tc.seed)))
            var v = train
            v.examples = hold.map { train.examples[$0] }
            v.truncated = 0
            train.examples = keep.map { train.examples[$0] }
            fileOf = keep.map { fileOf[$0] }
            events.log("valid: \(v.examples.count) examples held out of data.train (valid_split), \(v.countedTokens) trained-on tokens; \(train.examples.count) left to train on")
            guard train.countedTokens > 0 else {
                throw MoETuneError.config(path: configPath, key: "data.valid_split", message: "leaves no training example with a token to train on")
            }
            valid = v
        }
        let test = try c.data.test.map { try load($0, "test") }
        let mix = WeightedMix(files: c.data.trainFiles.enumerated().map { i, f in
            (train.examples.indices.filter { fileOf[$0] == i }, f.weight)
        })
        if !mix.isIdentity, let (i, drawn) = mix.excessiveDraws() {
            throw MoETuneError.config(path: configPath, key: c.data.trainFiles.count > 1 || c.data.trainFiles[0].weight != 1 ? "data.train[\(i)].weight" : "data.train",
                message: "\(c.data.trainFiles[i].weight) draws of \(mix.files[i].examples.count) examples make about \(String(format: "%.0f", drawn)) examples an epoch, "
                    + "more than \(WeightedMix.maxDrawnPerEpoch) (every draw is listed when the epoch starts); lower the weight")
        }
        if !mix.isIdentity {
            events.log("mix: " + zip(c.data.trainFiles, mix.files).map { "\($0.path) \($1.examples.count) examples x \($0.weight)" }
                .joined(separator: ", ") + " = \(mix.drawnPerEpoch) drawn an epoch")
        }
        let packing = tc.packingPlan
        if world.size > 1 {
            // Every rank must train the same thing: same resolved config, same files.
            let files = [c.model] + c.data.trainFiles.map(\.path) + [c.data.valid, c.data.test].compactMap { $0 }
            var h = FileDigest.of(paths: files)
            for b in c.resolvedYAML().utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            try world.requireSame(h, "resolved config, model and data files")
            events.log("data parallel: \(world.size) ranks (Open MPI); each step's \(tc.gradAccum) micro-batches are shared out, rank r taking r, r + \(world.size), ...")
        }

        if c.loraSpec.targets.contains(.sharedExpert), !model.layers.contains(where: { $0.sharedExpert != nil }) {
            throw MoETuneError.config(path: configPath, key: "lora.targets",
                message: "shared_expert, but \(model.config.family.name) models have no shared expert")
        }
        // Step plan: micro-batches of similar length (or packed rows), grad_accum of them per
        // step; micro-batch m of the run is a function of the seed (BatchPlan).
        let plan = BatchPlan(examples: train.examples, mix: mix, batchSize: tc.batchSize, packing: packing,
                             seed: UInt64(bitPattern: Int64(tc.seed)))
        // Buffers are sized from the data that is batched, not from the configured maxima.
        let (rows, longest) = plan.capacity
        let batchKey = packing != nil ? (tc.batchTokens != nil ? "training.batch_tokens" : "training.batch_size") : "training.batch_size"
        let batchText = "a batch of \(rows) sequences of up to \(longest) tokens"
        let lower = "training.batch_size, training.batch_tokens or training.max_seq_len"
        if tc.initAdapter == nil {
            // Before the expert-selection pass and the adapters, with the config's ranks (checked
            // again below with the adapters' own).
            let rank = max(c.loraSpec.rank, c.loraSpec.overrides.values.map(\.rank).max() ?? 0)
            let whole = c.loraSpec.targets.contains(.head) && c.loraSpec.dropout > 0
            try requireActivationsFit(model, rows: rows, seq: longest, loraRank: rank,
                                      headChunkRows: whole ? nil : ForwardState.defaultHeadChunkRows(vocab: model.config.vocabSize),
                                      batch: batchText, key: batchKey, lower: lower)
        }
        let spec = try resolvedLoRASpec(c, model: model, train: train, outDir: outDir, root: root, events: events)
        let adapters = try makeAdapters(model: model, config: c, spec: spec, events: events)
        let optimizer = Trainer.makeOptimizer(c, store: adapters.store)

        let perEpoch = plan.perEpoch
        let stepsFromEpochs = (Double(perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up)
        guard tc.maxSteps != nil || stepsFromEpochs <= Double(TrainConfig.limits.maxSteps) else {
            throw MoETuneError.config(path: configPath, key: "training.epochs",
                                      message: "\(tc.epochs ?? 1) epochs of \(perEpoch) batches are \(stepsFromEpochs) steps, more than \(TrainConfig.limits.maxSteps)")
        }
        let totalSteps = tc.maxSteps ?? max(1, Int(stepsFromEpochs))
        if let packing {
            let real = train.examples.reduce(0) { $0 + $1.tokens.count }
            events.log("packing: \(train.examples.count) examples into \(perEpoch) micro-batches of up to \(packing.rows) rows of \(packing.rowTokens) tokens (\(real) tokens an epoch before mixing)")
        }
        func microBatch(_ m: Int) -> TokenBatch { plan.microBatch(m) }
        let schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                            minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)

        // The head in row chunks (no [N, V] logits), its backward taken in the forward pass;
        // whole when a head adapter has dropout. The estimate counts the same buffers.
        let headChunkRows = adapters.head == nil || adapters.dropout == nil ? ForwardState.defaultHeadChunkRows(vocab: model.config.vocabSize) : nil
        let recompute = tc.recompute == .layers
        try requireActivationsFit(model, rows: rows, seq: longest, loraRank: adapters.maxRank, headChunkRows: headChunkRows,
                                  batch: batchText, key: batchKey, lower: lower)
        let state = ForwardState(config: model.config, batch: rows, seq: longest, training: true,
                                 loraRank: adapters.maxRank, jitter: model.moe.jitter > 0, headChunkRows: headChunkRows,
                                 recompute: recompute)
        state.scoredOnly = true
        let grads = BackwardState(for: state, config: model.config)
        let mc = model.config
        adapters.dropout?.reserve(rows * longest * max(mc.hiddenSize, mc.intermediateSize, mc.expertIntermediateSize, mc.sharedExpertIntermediateSize, mc.qDim))

        // Resume: parameters, optimizer state and position from the newest checkpoint, once
        // its manifest vouches for its files and the training data it was made from.
        let yaml = c.resolvedYAML()
        let dataIdentity = root ? try TrainCheckpoint.identify(data: c.data.trainFiles.map(\.path)) : []
        var resumed: TrainCheckpoint?
        var dataChanges: [(path: String, change: String)] = []
        if root, let path = resumeFrom {
            let recordedData = try TrainCheckpoint.verify(path: path)
            if recordedData == nil { events.log("note: \(path) has no manifest (an older moe-tune wrote it): its files and data are not verified") }
            let ck = try TrainCheckpoint.restore(path: path, adapters: adapters, optimizer: optimizer) { ck in
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
            resumed = ck
            events.log("resuming from \(path) (step \(ck.step) of \(totalSteps))")
        }
        if resume && world.size > 1 {
            resumed = try shareCheckpoint(resumed, world: world, adapters: adapters, optimizer: optimizer, yaml: yaml)
        }
        let startStep = (resumed?.step ?? 0) + 1

        let metrics = root ? try MetricsLog(path: outDir + "/metrics.jsonl", resumeAfter: resumed?.step, finalStep: totalSteps) : nil
        try recordRunOptions(metrics)
        if let ck = resumed, !dataChanges.isEmpty {
            events.log("data changed since checkpoint step \(ck.step): " + dataChanges.map { "\($0.path) \($0.change)" }.joined(separator: "; ")
                + "; continuing on the edited data (--accept-data-change)")
            try metrics?.write(["type": "data_change", "resumed_after_step": ck.step, "accepted": true,
                                "files": dataChanges.map { ["path": $0.path, "change": $0.change] }])
        }
        if root { try AtomicFile.write(Data(configFileText(yaml).utf8), to: outDir + "/config.yaml") }
        var lastCheckpoint: String?
        func checkpoint(step: Int, microIndex: Int, trainedTokens: Int, elapsed: Double, firstValid: Double?, lastValid: Double?) throws {
            guard root else { return }
            let ck = TrainCheckpoint(step: step, microIndex: microIndex, optimizerStep: optimizer.t, trainedTokens: trainedTokens,
                                     elapsed: elapsed, firstValidLoss: firstValid, lastValidLoss: lastValid,
                                     configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
            lastCheckpoint = try ck.write(outDir: outDir, adapters: adapters, optimizer: optimizer, family: model.family, baseModel: c.model,
                                          keep: tc.keepCheckpoints, data: dataIdentity)
        }

        var firstRouting: RoutingStatistics?
        var lastRouting: RoutingStatistics?
        func evaluate(_ ds: Dataset, _ split: String, step: Int, limit: Int?) throws -> EvalResult {
            adapters.dropout?.active = false
            model.moe.training = false
            var subset = ds
            if let limit { subset.examples = Array(ds.examples.prefix(limit * tc.batchSize)) }
            let r = try evaluateShare(subset, model: model, adapters: adapters, batchSize: tc.batchSize, packing: packing, world: world)
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
            events.evaluation(split, step, r)
            return r
        }

        // Parameters of the last step whose loss was finite, restored if training diverges.
        let lastGood = FloatBuffer(count: adapters.store.count)
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
        var firstValid = resumed?.firstValidLoss
        var lastValid = resumed?.lastValidLoss
        if let valid, resumed == nil {
            firstValid = try evaluate(valid, "valid", step: 0, limit: tc.evalBatches).loss
            lastValid = firstValid
        }
        let start = Date()
        let elapsedBefore = resumed?.elapsed ?? 0
        var trainedTokens = resumed?.trainedTokens ?? 0
        var microIndex = resumed?.microIndex ?? 0
        var stoppedAt: Int?
        var zeroGradientSteps = 0
        for step in stride(from: startStep, through: totalSteps, by: 1) {
            let group = microIndex..<(microIndex + tc.gradAccum)
            var stepTokens = 0, computed = 0, real = 0
            for m in group {
                let mb = microBatch(m)
                stepTokens += mb.countedTokens
                computed += mb.computedTokens
                real += mb.realTokens
            }
            // This rank's share of the step (all of it in one process).
            let mine = stride(from: group.lowerBound + world.rank, to: group.upperBound, by: world.size)
            adapters.store.zeroGrads()
            adapters.dropout?.active = true
            model.moe.training = true
            var lossSum = 0.0, auxSum = 0.0, zSum = 0.0
            let stepStart = Date()
            if stepTokens > 0 {
                for m in mine {
                    // Dropout masks and router noise follow the micro-batch, not the rank.
                    adapters.dropout?.step = m
                    model.moe.step = m
                    state.headLossScale = 1 / Float(stepTokens)
                    let r = try model.forward(microBatch(m), state: state, adapters: adapters)
                    lossSum += r.sum
                    auxSum += state.auxLoss / Double(tc.gradAccum)
                    zSum += state.zLoss / Double(tc.gradAccum)
                    model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(stepTokens),
                                   auxScale: 1 / Float(tc.gradAccum))
                }
            }
            microIndex += group.count
            if world.size > 1 {
                try world.sum(adapters.store.grads.pointer, count: adapters.store.count)
                let sums = try world.sum([lossSum, auxSum, zSum])
                (lossSum, auxSum, zSum) = (sums[0], sums[1], sums[2])
            }
            let traffic = world.takeTraffic()
            let loss = stepTokens > 0 ? lossSum / Double(stepTokens) : 0
            let objective = loss + Double(model.moe.auxLossCoef) * auxSum + Double(model.moe.zLossCoef) * zSum
            let norm = clipGradientNorm(adapters.store, maxNorm: c.optimizer.gradClip.map(Float.init))
            guard objective.isFinite, norm.isFinite else {
                adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
                if root { try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir) }
                throw MoETuneError.invalid("training diverged at step \(step): loss \(loss), gradient norm \(norm); the last adapter with a finite loss (the one step \(max(step - 1, 0)) evaluated) is saved in \(outDir); try a lower optimizer.lr")
            }
            lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
            let lr = schedule.lr(step: step)
            // Not NaN, but as dead: a gradient of exactly 0, step after step, with tokens to learn.
            zeroGradientSteps = norm == 0 && stepTokens > 0 ? zeroGradientSteps + 1 : 0
            if zeroGradientSteps >= DivergenceGuard.zeroGradientSteps {
                let kept = lastCheckpoint ?? (root ? TrainCheckpoint.list(outDir: outDir).last?.path : nil)
                throw MoETuneError.config(path: configPath, key: "optimizer.lr",
                    message: "training stopped at step \(step): the gradient norm has been exactly 0 for \(zeroGradientSteps) steps (loss \(loss)); "
                        + "the adapter is saturated, most likely by too high a learning rate (\(c.optimizer.lr)\(c.optimizer.gradClip == nil ? ", grad_clip off" : "")); "
                        + (kept.map { "the last checkpoint from before the gradient vanished, \($0), is kept" } ?? "no checkpoint was written")
                        + "; lower optimizer.lr and start again")
            }
            optimizer.step(lr: Float(lr))
            // An update that takes the weights out of any sane range: the step before it is kept.
            if let (i, v) = DivergenceGuard.firstExcessive(adapters.store) {
                adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
                if root { try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir) }
                throw MoETuneError.config(path: configPath, key: "optimizer.lr",
                    message: "training diverged at step \(step): an adapter weight reached \(v) (element \(i); more than \(DivergenceGuard.maxWeight) in magnitude) after an update at learning rate \(lr)"
                        + "\(c.optimizer.gradClip == nil ? " with grad_clip off" : ""); the learning rate is most likely too high: lower optimizer.lr"
                        + "\(c.optimizer.gradClip == nil ? " or set optimizer.grad_clip" : ""). The adapter before step \(step) is saved in \(outDir)"
                        + ((lastCheckpoint ?? (root ? TrainCheckpoint.list(outDir: outDir).last?.path : nil)).map { "; the last checkpoint \($0) is kept" } ?? ""))
            }
            trainedTokens += stepTokens
            let elapsed = elapsedBefore + Date().timeIntervalSince(start)
            let stepSeconds = max(Date().timeIntervalSince(stepStart), 1e-9)
            let record = StepRecord(step: step, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: stepTokens,
                                    tokensPerSecond: Double(stepTokens) / stepSeconds,
                                    elapsed: elapsed, computedTokens: computed, realTokens: real, seconds: stepSeconds)
            if step % tc.logEvery == 0 || step == totalSteps {
                var line: [String: Any] = ["type": "step", "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                                           "tokens": stepTokens, "tokens_per_s": record.tokensPerSecond, "elapsed_s": elapsed,
                                           "tokens_computed": computed, "tokens_real": real, "padding_share": record.paddingShare,
                                           "tokens_computed_per_s": record.computedTokensPerSecond]
                if model.config.isMoE { line["aux_loss"] = auxSum; line["z_loss"] = zSum }
                if world.size > 1 { line["ranks"] = world.size; line["allreduce_s"] = traffic.seconds; line["allreduce_bytes"] = traffic.bytes }
                try metrics?.write(line)
            }
            events.step(record)
            if let valid, tc.evalEvery > 0, step % tc.evalEvery == 0, step != totalSteps {
                lastValid = try evaluate(valid, "valid", step: step, limit: tc.evalBatches).loss
            }
            // Every rank stops at the same step (a signal reaches ranks at different moments).
            let stop = try world.any(events.shouldStop())
            // No periodic checkpoint while the gradient is exactly 0: with keep_checkpoints it
            // could rotate the last good one out before the guard above stops the run.
            if stop || step == totalSteps || (tc.saveEvery > 0 && step % tc.saveEvery == 0 && zeroGradientSteps == 0) {
                try checkpoint(step: step, microIndex: microIndex, trainedTokens: trainedTokens, elapsed: elapsed,
                               firstValid: firstValid, lastValid: lastValid)
                if step != totalSteps && root { try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir) }
            }
            if stop && step != totalSteps {
                stoppedAt = step
                break
            }
        }
        let seconds = Date().timeIntervalSince(start)
        if let stoppedAt {
            if root { try RunReport.write(outDir: outDir, title: "moe-tune: \((c.model as NSString).lastPathComponent) → \(outDir)") }
            return TrainSummary(steps: stoppedAt, seconds: seconds, trainedTokens: trainedTokens, firstValidLoss: firstValid,
                                lastValidLoss: lastValid, testLoss: nil, outDir: outDir, firstRouting: firstRouting, lastRouting: lastRouting,
                                stoppedAt: stoppedAt, checkpoint: lastCheckpoint, resumedFrom: resumed?.step)
        }
        if let valid { lastValid = try evaluate(valid, "valid", step: totalSteps, limit: nil).loss }
        let testLoss = try test.map { try evaluate($0, "test", step: totalSteps, limit: nil).loss }
        if root {
            try PEFTAdapter.save(adapters, family: model.family, baseModel: c.model, to: outDir)
            try RunReport.write(outDir: outDir, title: "moe-tune: \((c.model as NSString).lastPathComponent) → \(outDir)")
        }
        return TrainSummary(steps: totalSteps, seconds: seconds, trainedTokens: trainedTokens, firstValidLoss: firstValid,
                            lastValidLoss: lastValid, testLoss: testLoss, outDir: outDir,
                            firstRouting: firstRouting, lastRouting: lastRouting, stoppedAt: nil,
                            checkpoint: lastCheckpoint ?? (root ? TrainCheckpoint.list(outDir: outDir).last?.path : nil), resumedFrom: resumed?.step)
    }

    /// The adapter to train: training.init_adapter's (its rank, alpha and targets), or a new one
    /// from the lora section.
    /// The run's adapters: `init_adapter`'s, or new ones as `spec` (default the config's
    /// targets; an SFT run's ESFT selection narrows the experts) says.
    func makeAdapters(model: Transformer, config c: TrainConfig, spec: LoRASpec? = nil, events: TrainerEvents) throws -> AdapterSet {
        let adapters: AdapterSet
        if let dir = c.training.initAdapter {
            adapters = try PEFTAdapter.load(directory: dir, model: model)
            events.log("LoRA: starting from the adapter in \(dir) (its rank, alpha and targets; the optimizer starts fresh)")
        } else {
            adapters = try AdapterSet(model: model, spec: spec ?? c.loraSpec, seed: UInt64(bitPattern: Int64(c.training.seed)))
        }
        events.log("LoRA: \(adapters.all.count) adapted modules, \(adapters.store.count) trainable parameters"
            + (model.layers.first?.q.nf4 != nil ? "; base weights in NF4 (QLoRA)" : "")
            + (c.baseDType.isBF16 ? "; base weights in bf16 (\(c.baseDType.rawValue))" : ""))
        return adapters
    }

    static func makeOptimizer(_ c: TrainConfig, store: ParameterStore) -> Optimizer {
        switch c.optimizer.name {
        case .adamw:
            return AdamW(store: store, beta1: Float(c.optimizer.beta1), beta2: Float(c.optimizer.beta2),
                         eps: Float(c.optimizer.eps), weightDecay: Float(c.optimizer.weightDecay))
        case .sgd:
            return SGD(store: store, momentum: Float(c.optimizer.momentum), nesterov: c.optimizer.nesterov,
                       weightDecay: Float(c.optimizer.weightDecay))
        }
    }

    /// Rank 0's restored checkpoint (position, parameters, optimizer state) on every rank.
    func shareCheckpoint(_ ck: TrainCheckpoint?, world: Collective, adapters: AdapterSet, optimizer: Optimizer,
                                 yaml: String) throws -> TrainCheckpoint {
        let nan = Double.nan
        let head = try world.broadcast([Double(ck?.step ?? 0), Double(ck?.microIndex ?? 0), Double(ck?.optimizerStep ?? 0),
                                        Double(ck?.trainedTokens ?? 0), ck?.elapsed ?? 0, ck?.firstValidLoss ?? nan, ck?.lastValidLoss ?? nan])
        try world.broadcast(UnsafeMutableRawPointer(adapters.store.params.pointer), bytes: adapters.store.count * 4)
        for (_, buf) in optimizer.stateBuffers.sorted(by: { $0.key < $1.key }) {
            try world.broadcast(UnsafeMutableRawPointer(buf.pointer), bytes: buf.count * 4)
        }
        optimizer.t = Int(head[2])
        if let ck { return ck }
        return TrainCheckpoint(step: Int(head[0]), microIndex: Int(head[1]), optimizerStep: Int(head[2]), trainedTokens: Int(head[3]),
                               elapsed: head[4], firstValidLoss: head[5].isNaN ? nil : head[5], lastValidLoss: head[6].isNaN ? nil : head[6],
                               configHash: ConfigFingerprint.hash(yaml), configYAML: yaml)
    }

    /// Evaluation split over ranks (rank r takes examples r, r + ranks, ...), its sums
    /// reduced so that every rank holds the whole data set's result.
    private func evaluateShare(_ ds: Dataset, model: Transformer, adapters: AdapterSet, batchSize: Int, packing: PackingPlan?,
                               world: Collective) throws -> EvalResult {
        guard world.size > 1 else { return try Evaluator.evaluate(model: model, adapters: adapters, dataset: ds, batchSize: batchSize, packing: packing) }
        var share = ds
        share.examples = stride(from: world.rank, to: ds.examples.count, by: world.size).map { ds.examples[$0] }
        let c = model.config
        var r = share.examples.isEmpty
            ? EvalResult(loss: 0, perplexity: 1, tokens: 0, examples: 0, truncated: ds.truncated, seconds: 0,
                         routing: c.isMoE ? RoutingStatistics(layers: c.numLayers, experts: c.numExperts, k: c.expertsPerToken) : nil)
            : try Evaluator.evaluate(model: model, adapters: adapters, dataset: share, batchSize: batchSize, packing: packing)
        let sums = try world.sum([r.tokens > 0 ? r.loss * Double(r.tokens) : 0, Double(r.tokens), r.seconds])
        r.tokens = Int(sums[1].rounded())
        r.loss = r.tokens > 0 ? sums[0] / sums[1] : .nan
        r.perplexity = Foundation.exp(r.loss)
        r.examples = ds.examples.count
        r.seconds = sums[2] / Double(world.size)
        if let routing = r.routing {
            routing.load(flattened: try world.sum(routing.flattened()))
        }
        return r
    }

    /// Applies the `moe:` section to the model before any state is built.
    func configureMoE(_ model: Transformer) throws {
        let m = config.moe
        guard model.config.isMoE else {
            let used = m.zLossCoef != 0 || (m.auxLossCoef ?? 0) != 0 || m.router != nil || m.jitter != 0 || m.noiseStd != 0 || m.noiseLearned
                || m.capacityFactor != nil || m.topK != nil
            if used {
                throw MoETuneError.config(path: configPath, key: "moe", message: "\(model.config.family.name) models have no experts; remove the moe section")
            }
            return
        }
        if let k = m.topK {
            do { try model.overrideExpertsPerToken(k) } catch let e as MoETuneError {
                throw MoETuneError.config(path: configPath, key: "moe.top_k", message: e.description)
            }
        }
        var o = MoEOptions()
        o.auxLossCoef = Float(m.auxLossCoef ?? Double(model.config.routerAuxLossCoef))
        o.zLossCoef = Float(m.zLossCoef)
        o.capacityFactor = m.capacityFactor
        o.jitter = Float(m.jitter)
        o.noiseStd = Float(m.noiseStd)
        o.learnedNoise = m.noiseLearned
        o.seed = UInt64(bitPattern: Int64(config.training.seed)) ^ 0x4D6F45
        model.moe = o
    }

    /// The files a training run writes into out_dir (removed by an --overwrite run first).
    package static let runFiles = ["adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "config.yaml", "report.html", "checkpoints"]

    /// Makes out_dir ready and locks it: refuses an out_dir that holds the config file or
    /// the model, or lies inside the model folder, or that holds a run (unless `overwrite`, which removes that run's files
    /// and nothing else, or `resume`, which needs a checkpoint there); removes temporaries
    /// of killed runs; marks the folder as moe-tune's.
    private func prepareOutDir(_ dir: String, overwrite: Bool, resume: Bool) throws -> DirectoryLock {
        let fm = FileManager.default
        let key = "training.out_dir"
        if overwrite && resume { throw MoETuneError.invalid("--overwrite and --resume exclude each other: one starts over, the other continues") }
        for (what, path) in [("the config file", configPath), ("the model", config.model)] where OutputFolder.contains(dir, path) {
            throw MoETuneError.config(path: configPath, key: key, message: "\(dir) holds \(what) (\(path)); choose an out_dir of its own")
        }
        // Inside the model folder, adapter_config.json and adapter_model.safetensors would sit
        // beside (or below) the checkpoint that loaders scan.
        var modelIsDir: ObjCBool = false
        if fm.fileExists(atPath: config.model, isDirectory: &modelIsDir), modelIsDir.boolValue, OutputFolder.contains(config.model, dir) {
            throw MoETuneError.config(path: configPath, key: key, message: "\(dir) lies inside the model folder \(config.model); choose an out_dir outside it")
        }
        let dataFiles = config.data.trainFiles.map { ("training data", Optional($0.path)) }
            + [("validation data", config.data.valid), ("test data", config.data.test)]
        for (what, path) in dataFiles {
            if let path, OutputFolder.contains(path, dir) || OutputFolder.canonical(path) == OutputFolder.canonical(dir) {
                throw MoETuneError.config(path: configPath, key: key, message: "\(dir) is the \(what) \(path)")
            }
        }
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir, isDirectory: &isDir) {
            guard isDir.boolValue else { throw MoETuneError.config(path: configPath, key: key, message: "\(dir) exists and is not a folder") }
        } else {
            if resume { throw MoETuneError.config(path: configPath, key: key, message: "\(dir) does not exist: there is no run to resume") }
            do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw MoETuneError.config(path: configPath, key: key, message: "cannot create \(dir)")
            }
        }
        let lock = try DirectoryLock(directory: dir)
        AtomicFile.removeStale(in: dir, all: true)
        AtomicFile.removeStale(in: TrainCheckpoint.folder(dir), all: true)
        // OutputFolder's rule: train writes only into its own kind of folder, and --overwrite
        // removes only a run moe-tune wrote (never a foreign adapter folder's files).
        if OutputFolder.kind(of: dir) == .model {
            throw MoETuneError.config(path: configPath, key: key,
                message: "\(dir) holds a model folder written by moe-tune \(OutputFolder.writer(of: dir) ?? "merge"); choose another out_dir")
        }
        let existing = Trainer.runFiles.filter { fm.fileExists(atPath: dir + "/" + $0) }
        if resume {
            guard TrainCheckpoint.list(outDir: dir).last != nil else {
                throw MoETuneError.config(path: configPath, key: key, message: "\(dir) has no checkpoint to resume from (checkpoints/step-N); run without --resume")
            }
        } else if !existing.isEmpty {
            guard overwrite else {
                throw MoETuneError.config(path: configPath, key: key,
                    message: "\(dir) already holds a training run (\(existing.joined(separator: ", "))); continue it with --resume, choose another out_dir or pass --overwrite")
            }
            guard OutputFolder.kind(of: dir) == .trainingRun else {
                throw MoETuneError.config(path: configPath, key: key,
                    message: "\(dir) was not written by moe-tune (it has no \(OutputFolder.markerName)); --overwrite removes only a run moe-tune wrote: remove its files yourself or choose another out_dir")
            }
            for f in existing {
                do { try fm.removeItem(atPath: dir + "/" + f) } catch {
                    throw MoETuneError.file(path: dir + "/" + f, message: "cannot remove the old run's file: \(error.localizedDescription)")
                }
            }
        }
        try OutputFolder.mark(dir, by: "train")
        return lock
    }
}
