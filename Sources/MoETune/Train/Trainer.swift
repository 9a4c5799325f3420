import Foundation

/// What the trainer reports as it goes; the command-line layer renders it.
public struct TrainerEvents {
    public var log: (String) -> Void = { _ in }
    public var step: (StepRecord) -> Void = { _ in }
    public var evaluation: (String, Int, EvalResult) -> Void = { _, _, _ in }
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
}

/// LoRA fine-tuning of a frozen base: forward, hand-written backward, clipping,
/// optimizer and schedule over batches of similar length, with evaluation, metrics and
/// PEFT-format checkpoints in out_dir.
public final class Trainer {
    public let config: TrainConfig
    public let configPath: String

    public init(config: TrainConfig, configPath: String) {
        self.config = config
        self.configPath = configPath
    }

    public func run(overwrite: Bool = false, events: TrainerEvents = TrainerEvents()) throws -> TrainSummary {
        let c = config, tc = config.training
        let outDir = tc.outDir
        try prepareOutDir(outDir, overwrite: overwrite)

        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization)
        let model = loaded.model
        try model.config.checkSequenceLength(tc.maxSeqLen)
        try configureMoE(model)
        let chat = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model)
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
        let train = try load(c.data.train, "train")
        let valid = try c.data.valid.map { try load($0, "valid") }
        let test = try c.data.test.map { try load($0, "test") }

        let adapters = try AdapterSet(model: model, spec: c.loraSpec, seed: UInt64(bitPattern: Int64(tc.seed)))
        events.log("LoRA: \(adapters.all.count) adapted modules, \(adapters.store.count) trainable parameters"
            + (model.isQuantized ? "; base weights in NF4 (QLoRA)" : ""))
        let optimizer: Optimizer
        switch c.optimizer.name {
        case .adamw:
            optimizer = AdamW(store: adapters.store, beta1: Float(c.optimizer.beta1), beta2: Float(c.optimizer.beta2),
                              eps: Float(c.optimizer.eps), weightDecay: Float(c.optimizer.weightDecay))
        case .sgd:
            optimizer = SGD(store: adapters.store, momentum: Float(c.optimizer.momentum), nesterov: c.optimizer.nesterov,
                            weightDecay: Float(c.optimizer.weightDecay))
        }

        // Step plan: micro-batches of similar length, grad_accum of them per step.
        let perEpoch = (train.examples.count + tc.batchSize - 1) / tc.batchSize
        let totalSteps = tc.maxSteps ?? max(1, Int((Double(perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up)))
        var micro: [[Int]] = []
        var epoch = 0
        while micro.count < totalSteps * tc.gradAccum {
            micro += trainingBatches(train.examples, batchSize: tc.batchSize, seed: UInt64(bitPattern: Int64(tc.seed)), epoch: epoch)
            epoch += 1
        }
        // Every micro-batch is padded and laid out once, before the loop, so a step only
        // computes: the hot path allocates nothing.
        let microCount = totalSteps * tc.gradAccum
        let prepared = micro.prefix(microCount).map { TokenBatch(examples: $0.map { train.examples[$0] }) }
        let schedule = LearningRateSchedule(kind: c.schedule.name == .cosine ? .cosine : .constant, peak: c.optimizer.lr,
                                            minLR: c.schedule.minLR, warmup: c.schedule.warmupSteps, total: totalSteps)

        let longest = train.examples.map(\.tokens.count).max()!
        let state = ForwardState(config: model.config, batch: tc.batchSize, seq: longest, training: true,
                                 loraRank: adapters.maxRank, jitter: model.moe.jitter > 0)
        let grads = BackwardState(for: state, config: model.config)
        let mc = model.config
        adapters.dropout?.reserve(tc.batchSize * longest * max(mc.hiddenSize, mc.intermediateSize, mc.qDim))

        let metrics = try MetricsLog(path: outDir + "/metrics.jsonl")
        try AtomicFile.write(Data(c.resolvedYAML().utf8), to: outDir + "/config.yaml")

        var firstRouting: RoutingStatistics?
        var lastRouting: RoutingStatistics?
        func evaluate(_ ds: Dataset, _ split: String, step: Int, limit: Int?) throws -> EvalResult {
            adapters.dropout?.active = false
            model.moe.training = false
            var subset = ds
            if let limit { subset.examples = Array(ds.examples.prefix(limit * tc.batchSize)) }
            let r = try Evaluator.evaluate(model: model, adapters: adapters, dataset: subset, batchSize: tc.batchSize)
            var line: [String: Any] = ["type": "eval", "step": step, "split": split, "loss": r.loss, "perplexity": r.perplexity,
                                       "tokens": r.tokens, "examples": r.examples]
            if let routing = r.routing {
                line["experts"] = routing.summary()
                if split == "valid" {
                    if firstRouting == nil { firstRouting = routing }
                    lastRouting = routing
                }
            }
            metrics.write(line)
            events.evaluation(split, step, r)
            return r
        }

        // Parameters of the last step whose loss was finite, restored if training diverges.
        let lastGood = FloatBuffer(count: adapters.store.count)
        lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
        var firstValid: Double?
        var lastValid: Double?
        if let valid {
            firstValid = try evaluate(valid, "valid", step: 0, limit: tc.evalBatches).loss
            lastValid = firstValid
        }
        let start = Date()
        var trainedTokens = 0
        var microIndex = 0
        for step in 1...totalSteps {
            let group = microIndex..<(microIndex + tc.gradAccum)
            var stepTokens = 0
            for m in group { stepTokens += prepared[m].countedTokens }
            adapters.store.zeroGrads()
            adapters.dropout?.active = true
            model.moe.training = true
            var lossSum = 0.0, auxSum = 0.0, zSum = 0.0
            let stepStart = Date()
            if stepTokens > 0 {
                for m in group {
                    adapters.dropout?.step = microIndex
                    model.moe.step = microIndex
                    microIndex += 1
                    let r = try model.forward(prepared[m], state: state, adapters: adapters)
                    lossSum += r.sum
                    auxSum += state.auxLoss / Double(tc.gradAccum)
                    zSum += state.zLoss / Double(tc.gradAccum)
                    model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(stepTokens),
                                   auxScale: 1 / Float(tc.gradAccum))
                }
            } else {
                microIndex += group.count
            }
            let loss = stepTokens > 0 ? lossSum / Double(stepTokens) : 0
            let objective = loss + Double(model.moe.auxLossCoef) * auxSum + Double(model.moe.zLossCoef) * zSum
            let norm = clipGradientNorm(adapters.store, maxNorm: c.optimizer.gradClip.map(Float.init))
            guard objective.isFinite, norm.isFinite else {
                adapters.store.params.pointer.update(from: lastGood.pointer, count: adapters.store.count)
                try PEFTAdapter.save(adapters, baseModel: c.model, to: outDir)
                throw MoETuneError.invalid("training diverged at step \(step): loss \(loss), gradient norm \(norm); the last adapter with a finite loss (the one step \(max(step - 1, 0)) evaluated) is saved in \(outDir); try a lower optimizer.lr")
            }
            lastGood.pointer.update(from: adapters.store.params.pointer, count: adapters.store.count)
            let lr = schedule.lr(step: step)
            optimizer.step(lr: Float(lr))
            trainedTokens += stepTokens
            let elapsed = Date().timeIntervalSince(start)
            let record = StepRecord(step: step, totalSteps: totalSteps, loss: loss, lr: lr, gradNorm: norm, tokens: stepTokens,
                                    tokensPerSecond: Double(stepTokens) / max(Date().timeIntervalSince(stepStart), 1e-9),
                                    elapsed: elapsed)
            if step % tc.logEvery == 0 || step == totalSteps {
                var line: [String: Any] = ["type": "step", "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                                           "tokens": stepTokens, "tokens_per_s": record.tokensPerSecond, "elapsed_s": elapsed]
                if model.config.isMoE { line["aux_loss"] = auxSum; line["z_loss"] = zSum }
                metrics.write(line)
            }
            events.step(record)
            if let valid, tc.evalEvery > 0, step % tc.evalEvery == 0, step != totalSteps {
                lastValid = try evaluate(valid, "valid", step: step, limit: tc.evalBatches).loss
            }
            if tc.saveEvery > 0, step % tc.saveEvery == 0, step != totalSteps {
                try PEFTAdapter.save(adapters, baseModel: c.model, to: outDir)
            }
        }
        let seconds = Date().timeIntervalSince(start)
        if let valid { lastValid = try evaluate(valid, "valid", step: totalSteps, limit: nil).loss }
        let testLoss = try test.map { try evaluate($0, "test", step: totalSteps, limit: nil).loss }
        try PEFTAdapter.save(adapters, baseModel: c.model, to: outDir)
        try RunReport.write(outDir: outDir, title: "moe-tune: \((c.model as NSString).lastPathComponent) → \(outDir)")
        return TrainSummary(steps: totalSteps, seconds: seconds, trainedTokens: trainedTokens, firstValidLoss: firstValid,
                            lastValidLoss: lastValid, testLoss: testLoss, outDir: outDir,
                            firstRouting: firstRouting, lastRouting: lastRouting)
    }

    /// Applies the `moe:` section to the model before any state is built.
    private func configureMoE(_ model: Transformer) throws {
        let m = config.moe
        guard model.config.isMoE else {
            let used = m.zLossCoef != 0 || (m.auxLossCoef ?? 0) != 0 || m.router != nil || m.jitter != 0 || m.noiseStd != 0 || m.noiseLearned
                || m.capacityFactor != nil || m.topK != nil
            if used {
                throw MoETuneError.config(path: configPath, key: "moe", message: "\(model.config.family.rawValue) models have no experts; remove the moe section")
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

    /// Refuses to write into a folder that already holds a run, unless told to.
    private func prepareOutDir(_ dir: String, overwrite: Bool) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir, isDirectory: &isDir) {
            guard isDir.boolValue else { throw MoETuneError.config(path: configPath, key: "training.out_dir", message: "\(dir) exists and is not a folder") }
            let existing = ["adapter_model.safetensors", "adapter_config.json", "metrics.jsonl"].filter { fm.fileExists(atPath: dir + "/" + $0) }
            if !existing.isEmpty && !overwrite {
                throw MoETuneError.config(path: configPath, key: "training.out_dir",
                    message: "\(dir) already holds a training run (\(existing.joined(separator: ", "))); choose another out_dir or pass --overwrite")
            }
        } else {
            do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw MoETuneError.config(path: configPath, key: "training.out_dir", message: "cannot create \(dir)")
            }
        }
    }
}
