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

    /// metrics.jsonl's line for the run options of this start or resume.
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

    /// The run `config.training.method` names. SFT goes by SFTRun's named steps: the data,
    /// the agreement of the ranks, adapters and optimizer, the step plan, the buffers, the
    /// restore or start; then SFTLoop's steps, evaluations and checkpoints, and the end.
    private func train(outDir: String, resume: Bool, resumeFrom: String?, acceptDataChange: Bool, events: TrainerEvents, world: Collective) throws -> TrainSummary {
        if config.training.method == .grpo {
            return try trainGRPO(outDir: outDir, resume: resume, resumeFrom: resumeFrom, acceptDataChange: acceptDataChange, events: events, world: world)
        }
        if config.training.method != .sft {
            return try trainPreference(outDir: outDir, resume: resume, resumeFrom: resumeFrom, acceptDataChange: acceptDataChange, events: events, world: world)
        }
        let run = try SFTRun(trainer: self, outDir: outDir, events: events, world: world)
        JSONL.maxLineBytes = run.config.data.maxLineBytes
        defer { JSONL.maxLineBytes = JSONL.defaultMaxLineBytes }
        let data = try run.prepareData()
        try run.agreeAcrossRanks()
        let trainable = try run.buildOptimizer(data)
        let steps = try run.planSteps(data, plan: trainable.plan)
        let buffers = try run.buildStates(trainable)
        let start = try run.restoreOrStart(from: resumeFrom, resume: resume, acceptDataChange: acceptDataChange, trainable,
                                           totalSteps: steps.totalSteps)
        return try SFTLoop(run: run, data: data, trainable, steps: steps, buffers: buffers, start: start).train()
    }

    /// The run's adapters: `init_adapter`'s (its rank, alpha and targets), or new ones as
    /// `spec` (default the config's targets; an SFT run's ESFT selection narrows the experts) says.
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

    /// The optimizer section's optimizer over `store`'s parameters.
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
    func evaluateShare(_ ds: Dataset, model: Transformer, adapters: AdapterSet, batchSize: Int, packing: PackingPlan?,
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
