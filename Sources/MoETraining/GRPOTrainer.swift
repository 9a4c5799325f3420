import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// training.method grpo: the same run as SFT and DPO (out_dir, checkpoints, step-exact resume,
/// metrics.jsonl, report.html, the PEFT adapter) over {"prompt", ...fields} lines. A generation
/// batch is grad_accum micro-batches of batch_size prompts; each prompt gets grpo.group_size
/// completions sampled with the current adapter (BatchGenerator, exact products, seeds from the
/// run seed, the generation and the completion's index), scored by grpo.rewards, and the
/// advantages normalised within each group; grpo.iterations optimizer steps then train on that
/// batch (GRPOStep). The reference (beta > 0) is the base with the adapter off, or init_adapter's.
extension Trainer {
    func trainGRPO(outDir: String, resume: Bool, resumeFrom: String?, acceptDataChange: Bool, events: TrainerEvents,
                   world: Collective) throws -> TrainSummary {
        let c = config, tc = c.training, g = c.grpo
        guard world.size == 1 else {
            throw MoETuneError.config(path: configPath, key: "training.method", message: "grpo runs in one process for now (not over MPI ranks)")
        }
        try requirePreferenceSupport()
        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization, base: c.baseDType)
        let model = loaded.model
        try configureMoE(model)
        JSONL.maxLineBytes = c.data.maxLineBytes
        defer { JSONL.maxLineBytes = JSONL.defaultMaxLineBytes }
        let rewards = GRPORewardSet(g.rewards, configPath: configPath)
        let data = try loadGRPOData(loaded, rewards: rewards, events: events)
        let adapters = try makeAdapters(model: model, config: c, events: events)
        let refAdapters = try tc.initAdapter.map { try PEFTAdapter.load(directory: $0, model: model) }
        let plan = GRPOPlan(prompts: data.train.prompts, batchSize: tc.batchSize, seed: UInt64(bitPattern: Int64(tc.seed)))
        let generations = tc.maxSteps.map { ($0 + g.iterations - 1) / g.iterations }
            ?? max(1, Int(min((Double(plan.perEpoch) * (tc.epochs ?? 1) / Double(tc.gradAccum)).rounded(.up), Double(TrainConfig.limits.maxSteps))))
        let totalSteps = tc.maxSteps ?? generations * g.iterations
        let longest = ([data.train] + [data.valid, data.test].compactMap { $0 }).flatMap(\.prompts).map(\.ids.count).max() ?? 1
        // The decoder's cache holds at most `cache` tokens; a sequence it returns can be one longer
        // (the last token picked is never fed back), so a training row holds cache + 1 <= max_seq_len.
        let cache = min(longest + g.maxNewTokens, tc.maxSeqLen - 1), seq = cache + 1
        let rows = tc.batchSize * g.groupSize
        try requireWholeHeadFits(model, rows: rows, seq: seq, loraRank: max(adapters.maxRank, refAdapters?.maxRank ?? 0), batch: "\(rows) completions of up to \(seq) tokens",
                                 lower: "training.batch_size, grpo.group_size or grpo.max_new_tokens")
        let state = ForwardState(config: model.config, batch: rows, seq: seq, training: true,
                                 loraRank: max(adapters.maxRank, refAdapters?.maxRank ?? 0), jitter: model.moe.jitter > 0, headChunkRows: nil,
                                 recompute: tc.recompute == .layers)
        state.scoredOnly = true
        let mc = model.config
        adapters.dropout?.reserve(rows * seq * max(mc.hiddenSize, mc.intermediateSize, mc.expertIntermediateSize, mc.sharedExpertIntermediateSize, mc.qDim))
        events.log("grpo: \(data.train.prompts.count) prompts, \(tc.gradAccum) x \(tc.batchSize) prompts x \(g.groupSize) completions a generation, "
            + "\(g.iterations) step\(g.iterations == 1 ? "" : "s") each, \(totalSteps) steps")

        let optimizer = Trainer.makeOptimizer(c, store: adapters.store)
        let yaml = c.resolvedYAML()
        let dataIdentity = try TrainCheckpoint.identify(data: c.data.trainFiles.map(\.path))
        let resumed = try resumeFrom.map { path in
            let ck = try restorePreference(path: path, adapters: adapters, optimizer: optimizer, yaml: yaml, totalSteps: totalSteps,
                                           dataIdentity: dataIdentity, acceptDataChange: acceptDataChange)
            guard ck.step % g.iterations == 0 || ck.step == totalSteps else {
                throw MoETuneError.file(path: path, message: "step \(ck.step) is inside a generation batch (grpo.iterations \(g.iterations)); resume from a checkpoint at a multiple of it")
            }
            events.log("resuming from \(path) (step \(ck.step) of \(totalSteps))")
            return ck
        }
        let generator = BatchGenerator(model: model, adapters: adapters, maxLength: cache, parallel: max(1, min(8, rows)),
                                       stopIds: loaded.tokenizer.stopIds, products: .exact)
        // Each generation samples with the adapter as trained so far: a finished sequence's
        // keys and values are the old adapter's, not to be reused.
        generator.reuseFinished = false
        let run = GRPORun(config: c, configPath: configPath, outDir: outDir, model: model, tokenizer: loaded.tokenizer, adapters: adapters,
                          refAdapters: refAdapters, optimizer: optimizer, step: try GRPOStep(model: model, state: state), generator: generator,
                          rewards: rewards, plan: plan, trainPath: data.train.path, totalSteps: totalSteps,
                          metrics: try MetricsLog(path: outDir + "/metrics.jsonl", resumeAfter: resumed?.step, finalStep: totalSteps),
                          yaml: yaml, dataIdentity: dataIdentity, events: events)
        try AtomicFile.write(Data(yaml.utf8), to: outDir + "/config.yaml")
        return try run.train(valid: data.valid, test: data.test, resumed: resumed)
    }

    /// The training prompts (every data.train file, one set), the validation prompts (data.valid,
    /// or data.valid_split held out) and the test prompts; every line checked against the rewards.
    private func loadGRPOData(_ loaded: LoadedModel, rewards: GRPORewardSet, events: TrainerEvents)
        throws -> (train: GRPODataset, valid: GRPODataset?, test: GRPODataset?) {
        let c = config, tc = c.training
        var chat: ChatEncoder?
        if case let .jinja(renderer) = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model) {
            chat = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        }
        func load(_ path: String, _ split: String) throws -> GRPODataset {
            let ds = try GRPODataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                          maxSeqLen: tc.maxSeqLen, minNew: 2, chat: chat)
            try rewards.check(ds.prompts, path: path)
            events.log("\(split): \(ds.prompts.count) prompts from \(path)")
            return ds
        }
        let files = try c.data.trainFiles.map { try load($0.path, "train") }
        var train = GRPODataset(path: files[0].path, prompts: files.flatMap(\.prompts))
        var valid = try c.data.valid.map { try load($0, "valid") }
        if let split = c.data.validSplit {
            let held = try ValidSplitter.heldOut(split, total: train.prompts.count, configPath: configPath)
            let (keep, hold) = ValidSplitter.split(total: train.prompts.count, held: held, seed: UInt64(bitPattern: Int64(tc.seed)))
            valid = GRPODataset(path: train.path, prompts: hold.map { train.prompts[$0] })
            train.prompts = keep.map { train.prompts[$0] }
            events.log("valid: \(hold.count) prompts held out of data.train (valid_split); \(train.prompts.count) left to train on")
        }
        return (train, valid, try c.data.test.map { try load($0, "test") })
    }

}

/// Micro-batch m of a GRPO run: the prompts of batch m % perEpoch of epoch m / perEpoch (a
/// seeded shuffle, length-sorted windows, as SFT's batches).
package final class GRPOPlan {
    package let prompts: [GRPOPrompt]
    package let batchSize: Int
    package let seed: UInt64
    package let perEpoch: Int
    private var cached: (epoch: Int, batches: [[Int]])?

    package init(prompts: [GRPOPrompt], batchSize: Int, seed: UInt64) {
        self.prompts = prompts; self.batchSize = batchSize; self.seed = seed
        perEpoch = (prompts.count + batchSize - 1) / batchSize
    }

    package func microBatch(_ m: Int) -> [Int] {
        let epoch = m / perEpoch
        if cached?.epoch != epoch {
            cached = (epoch, trainingBatches(lengths: prompts.map(\.ids.count), batchSize: batchSize, seed: seed, epoch: epoch))
        }
        return cached!.batches[m % perEpoch]
    }

    /// The sampling seed of completion k of generation g (a SplitMix64 finalizer over the three).
    package static func seed(run: UInt64, generation g: Int, completion k: Int) -> UInt64 {
        var x = run ^ (UInt64(g) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(k) &* 0xD1B5_4A32_D192_ED03) ^ 0x6772_706F
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        return x ^ (x >> 31)
    }
}
