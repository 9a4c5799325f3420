import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// A supervised fine-tuning run as named steps, each of which can be run (and tested) on its
/// own: `prepareData`, `agreeAcrossRanks`, `buildOptimizer`, `planSteps`, `buildStates`,
/// `restoreOrStart`, then SFTLoop's `begin`, `trainStep`, `evaluateAndCheckpoint` and `finish`.
/// Trainer.train runs them in that order.
final class SFTRun {
    /// The data a run trains and evaluates on: the training set (less valid_split's part), the
    /// validation and test sets, and the weighted mix of the training files over the training set.
    struct Datasets {
        var train: Dataset
        var valid: Dataset?
        var test: Dataset?
        var mix: WeightedMix
    }

    /// What the steps change: the plan of micro-batches, the adapters and their optimizer.
    struct Trainable {
        let plan: BatchPlan
        let adapters: AdapterSet
        let optimizer: Optimizer
    }

    /// How long the run is and the learning rate at each step.
    struct StepPlan {
        let totalSteps: Int
        let schedule: LearningRateSchedule
    }

    /// Where the run starts: the checkpoint resumed (nil: step 0), the metrics log (rank 0),
    /// the resolved config it is checkpointed under and the identity of its training files.
    struct Start {
        let resumed: TrainCheckpoint?
        let metrics: MetricsLog?
        let yaml: String
        let dataIdentity: [TrainCheckpoint.FileIdentity]
    }

    let trainer: Trainer
    /// The run as one process would do it: grad_accum x ranks micro-batches a step. The
    /// resolved config.yaml records that figure, so a run resumes on any number of ranks
    /// whose product with grad_accum stays the same.
    let config: TrainConfig
    let outDir: String
    let events: TrainerEvents
    let world: Collective
    let model: Transformer
    let tokenizer: any TextTokenizer
    let chat: ChatFormat
    var configPath: String { trainer.configPath }
    var root: Bool { world.isRoot }

    /// Scales grad_accum by the ranks, loads the model (moe section applied) and the chat format.
    init(trainer: Trainer, outDir: String, events: TrainerEvents, world: Collective) throws {
        var c = trainer.config
        guard c.training.gradAccum * world.size <= TrainConfig.limits.gradAccum else {
            throw MoETuneError.config(path: trainer.configPath, key: "training.grad_accum",
                                      message: "\(c.training.gradAccum) x \(world.size) ranks is more than \(TrainConfig.limits.gradAccum) micro-batches a step")
        }
        c.training.gradAccum *= world.size
        (self.trainer, config, self.outDir, self.events, self.world) = (trainer, c, outDir, events, world)
        let loaded = try LoadedModel.load(directory: c.model, quantize: c.quantization, base: c.baseDType)
        (model, tokenizer) = (loaded.model, loaded.tokenizer)
        try trainer.configureMoE(model)
        chat = try ChatFormat.resolve(c.data.chatTemplate, modelDirectory: c.model)
    }

    /// Step 1: the training files concatenated (valid_split holds a seeded part of them out as
    /// the validation set), the valid and test files, and the weighted mix of the training
    /// files; logs each set's counts. Reads JSONL lines up to JSONL.maxLineBytes.
    func prepareData() throws -> Datasets {
        let c = config
        var (train, fileOf) = try loadTrainFiles()
        var valid = try c.data.valid.map { try loadDataset($0, "valid") }
        if let split = c.data.validSplit {
            valid = try holdOut(split, from: &train, fileOf: &fileOf)
        }
        let test = try c.data.test.map { try loadDataset($0, "test") }
        let mix = try weightedMix(train: train, fileOf: fileOf)
        return Datasets(train: train, valid: valid, test: test, mix: mix)
    }

    /// One data file, tokenized and logged; refuses one without a token to train on.
    func loadDataset(_ path: String, _ split: String) throws -> Dataset {
        let maxSeqLen = config.training.maxSeqLen
        let options = DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: config.data.trainOnInputs, chat: chat)
        let ds = try Dataset.load(path: path, tokenizer: tokenizer, vocabSize: model.config.vocabSize, options: options)
        let empty = ds.examples.filter { $0.countedTokens == 0 }.count
        events.log("\(split): \(ds.examples.count) examples, \(ds.countedTokens) trained-on tokens from \(path)"
            + (ds.truncated > 0 ? "; \(ds.truncated) truncated to max_seq_len \(maxSeqLen)" : "")
            + (empty > 0 ? "; \(empty) have no target tokens left (prompt fills max_seq_len) and add nothing to the loss" : ""))
        guard ds.countedTokens > 0 else {
            throw MoETuneError.file(path: path, message: "no example has a token to train on (all prompts fill max_seq_len \(maxSeqLen)?)")
        }
        return ds
    }

    /// data.train's files as one set, and the file each of its examples came from.
    func loadTrainFiles() throws -> (train: Dataset, fileOf: [Int]) {
        let files = config.data.trainFiles
        var train = try loadDataset(files[0].path, "train")
        var fileOf = [Int](repeating: 0, count: train.examples.count)
        for (i, f) in files.enumerated().dropFirst() {
            let ds = try loadDataset(f.path, "train")
            train.examples += ds.examples
            train.truncated += ds.truncated
            fileOf += [Int](repeating: i, count: ds.examples.count)
        }
        return (train, fileOf)
    }

    /// valid_split: a seeded part of `train` taken out as the validation set (returned);
    /// `train` and `fileOf` keep the rest.
    func holdOut(_ split: TrainConfig.ValidSplit, from train: inout Dataset, fileOf: inout [Int]) throws -> Dataset {
        let held = try ValidSplitter.heldOut(split, total: train.examples.count, configPath: configPath)
        let (keep, hold) = ValidSplitter.split(total: train.examples.count, held: held, seed: UInt64(bitPattern: Int64(config.training.seed)))
        var v = train
        v.examples = hold.map { train.examples[$0] }
        v.truncated = 0
        train.examples = keep.map { train.examples[$0] }
        fileOf = keep.map { fileOf[$0] }
        events.log("valid: \(v.examples.count) examples held out of data.train (valid_split), \(v.countedTokens) trained-on tokens; \(train.examples.count) left to train on")
        guard train.countedTokens > 0 else {
            throw MoETuneError.config(path: configPath, key: "data.valid_split", message: "leaves no training example with a token to train on")
        }
        return v
    }

    /// The training files' weights over the training set's examples; refuses an epoch that
    /// would draw too many.
    func weightedMix(train: Dataset, fileOf: [Int]) throws -> WeightedMix {
        let files = config.data.trainFiles
        let mix = WeightedMix(files: files.enumerated().map { i, f in
            (train.examples.indices.filter { fileOf[$0] == i }, f.weight)
        })
        if !mix.isIdentity, let (i, drawn) = mix.excessiveDraws() {
            throw MoETuneError.config(path: configPath, key: files.count > 1 || files[0].weight != 1 ? "data.train[\(i)].weight" : "data.train",
                message: "\(files[i].weight) draws of \(mix.files[i].examples.count) examples make about \(String(format: "%.0f", drawn)) examples an epoch, "
                    + "more than \(WeightedMix.maxDrawnPerEpoch) (every draw is listed when the epoch starts); lower the weight")
        }
        if !mix.isIdentity {
            events.log("mix: " + zip(files, mix.files).map { "\($0.path) \($1.examples.count) examples x \($0.weight)" }
                .joined(separator: ", ") + " = \(mix.drawnPerEpoch) drawn an epoch")
        }
        return mix
    }

    /// Step 2 (data parallel): every rank must train the same thing, the same resolved config
    /// on the same files; nothing to do in one process.
    func agreeAcrossRanks() throws {
        guard world.size > 1 else { return }
        let c = config
        let files = [c.model] + c.data.trainFiles.map(\.path) + [c.data.valid, c.data.test].compactMap { $0 }
        var h = FileDigest.of(paths: files)
        for b in c.resolvedYAML().utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        try world.requireSame(h, "resolved config, model and data files")
        events.log("data parallel: \(world.size) ranks (Open MPI); each step's \(c.training.gradAccum) micro-batches are shared out, rank r taking r, r + \(world.size), ...")
    }
}
