import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// The named steps of an SFT run (SFTRun, SFTLoop), each on its own on the mixtral fixture:
/// the data and its split, the adapters and optimizer, the step plan, restore or start,
/// one step, evaluation and checkpoint; and the steps run by hand give Trainer.run's adapter.
final class TrainingStepsTests: XCTestCase {
    /// a.jsonl (24 examples), b.jsonl (12) and t.jsonl (5) in `dir`, and c.yaml training on
    /// a.jsonl (or `data`'s lines), with `optimizer`'s and `training`'s lines and `extra`
    /// sections; returns c.yaml's path.
    func setUp(_ dir: String, data: String? = nil, optimizer: String = "lr: 1.0e-2", training: String = "max_steps: 3",
               extra: String = "") throws -> String {
        var a = "", b = "", t = ""
        for i in 0..<24 { a += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        for i in 0..<12 { b += "{\"text\": \"\(String(repeating: "one two three ", count: 1 + i % 4))\"}\n" }
        for i in 0..<5 { t += "{\"prompt\": \"Add \(i) and \(i + 2).\", \"completion\": \" \(2 * i + 2)\"}\n" }
        for (name, text) in [("a", a), ("b", b), ("t", t)] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).jsonl"))
        }
        func indent(_ s: String) -> String { s.replacingOccurrences(of: "\n", with: "\n  ") }
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data:
          \(indent(data ?? "train: \(dir)/a.jsonl"))
        lora:
          rank: 4
          targets: [query, value]
        optimizer:
          \(indent(optimizer))
        training:
          batch_size: 4
          grad_accum: 2
          max_seq_len: 32
          out_dir: \(dir)/out
          \(indent(training))
        \(extra)
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    /// The run of the config at `path` before its first step (the model loaded), out_dir made.
    func makeRun(_ path: String, events: TrainerEvents = TrainerEvents()) throws -> SFTRun {
        let trainer = Trainer(config: try TrainConfig.load(path: path), configPath: path)
        try FileManager.default.createDirectory(atPath: trainer.config.training.outDir, withIntermediateDirectories: true)
        return try SFTRun(trainer: trainer, outDir: trainer.config.training.outDir, events: events, world: SingleProcess())
    }

    /// Every step up to the loop, from `resumeFrom` (a checkpoint folder) or the start.
    func makeLoop(_ run: SFTRun, resumeFrom: String? = nil) throws -> SFTLoop {
        let data = try run.prepareData()
        try run.agreeAcrossRanks()
        let t = try run.buildOptimizer(data)
        let steps = try run.planSteps(data, plan: t.plan)
        let buffers = try run.buildStates(t)
        let start = try run.restoreOrStart(from: resumeFrom, resume: resumeFrom != nil, acceptDataChange: false, t,
                                           totalSteps: steps.totalSteps)
        return SFTLoop(run: run, data: data, t, steps: steps, buffers: buffers, start: start)
    }

    func params(_ adapters: AdapterSet) -> [Float] {
        Array(UnsafeBufferPointer(start: adapters.store.params.pointer, count: adapters.store.count))
    }

    func testPrepareDataSplitsFilesAndMix() throws {
        let dir = try makeTempDir(self)
        let path = try setUp(dir, data: "train: [\(dir)/a.jsonl, {path: \(dir)/b.jsonl, weight: 2}]\nvalid_split: 6\ntest: \(dir)/t.jsonl")
        var logs: [String] = []
        var events = TrainerEvents()
        events.log = { logs.append($0) }
        let data = try makeRun(path, events: events).prepareData()
        // 24 + 12 training examples, 6 of them held out; the mix covers the 30 left, by file.
        XCTAssertEqual(data.train.examples.count, 30)
        XCTAssertEqual(data.valid?.examples.count, 6)
        XCTAssertEqual(data.test?.examples.count, 5)
        XCTAssertEqual(data.mix.files.map(\.weight), [1, 2])
        let fromA = data.mix.files[0].examples.count
        XCTAssertEqual(data.mix.files[0].examples, Array(0..<fromA))
        XCTAssertEqual(data.mix.files[1].examples, Array(fromA..<30), "b's examples follow a's")
        XCTAssertEqual(data.mix.drawnPerEpoch, fromA + 2 * (30 - fromA))
        // The held-out examples are valid_split's seeded choice among both files' 36.
        let all = try makeRun(setUp(dir, data: "train: [\(dir)/a.jsonl, \(dir)/b.jsonl]")).prepareData().train.examples
        XCTAssertEqual(all.count, 36)
        let (keep, hold) = ValidSplitter.split(total: 36, held: 6, seed: 0)
        XCTAssertEqual(data.valid!.examples.map(\.tokens), hold.map { all[$0].tokens })
        XCTAssertEqual(data.train.examples.map(\.tokens), keep.map { all[$0].tokens })
        XCTAssertEqual(fromA, keep.filter { $0 < 24 }.count)
        XCTAssertTrue(logs.contains { $0.hasPrefix("valid: 6 examples held out of data.train (valid_split)") }, "\(logs)")
        XCTAssertTrue(logs.contains { $0.hasPrefix("mix: ") && $0.hasSuffix(" = \(data.mix.drawnPerEpoch) drawn an epoch") }, "\(logs)")
    }

    func testPrepareDataRefusesASplitThatLeavesNothing() throws {
        let dir = try makeTempDir(self)
        let path = try setUp(dir, data: "train: \(dir)/t.jsonl\nvalid_split: 5")
        assertMoETuneError(try makeRun(path).prepareData(), contains: ["c.yaml", "data.valid_split", "5 of the 5"])
    }

    func testBuildOptimizerFollowsTheConfig() throws {
        let dir = try makeTempDir(self)
        let adamRun = try makeRun(setUp(dir, optimizer: "lr: 1.0e-2\nbetas: [0.8, 0.95]\neps: 1.0e-6\nweight_decay: 0.1"))
        let adam = try adamRun.buildOptimizer(adamRun.prepareData())
        let a = try XCTUnwrap(adam.optimizer as? AdamW)
        XCTAssertEqual([a.beta1, a.beta2, a.eps, a.weightDecay], [0.8, 0.95, 1e-6, 0.1])
        XCTAssertTrue(a.store === adam.adapters.store, "the optimizer updates the adapters' parameters")
        XCTAssertEqual(adam.optimizer.t, 0)
        // query and value of the 2 layers at rank 4: A [4, 64] each, B [64, 4] (query) and [32, 4] (value).
        XCTAssertEqual(adam.adapters.all.count, 4)
        XCTAssertEqual(adam.adapters.store.count, 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4))
        let sgdRun = try makeRun(setUp(dir, optimizer: "name: sgd\nlr: 1.0e-2\nmomentum: 0.9\nnesterov: true"))
        let sgd = try XCTUnwrap(try sgdRun.buildOptimizer(sgdRun.prepareData()).optimizer as? SGD)
        XCTAssertEqual(sgd.momentum, 0.9)
        XCTAssertTrue(sgd.nesterov)
    }

    func testBuildOptimizerRefusesASharedExpertTheModelLacks() throws {
        let dir = try makeTempDir(self)
        let path = try setUp(dir)
        try String(contentsOfFile: path).replacingOccurrences(of: "targets: [query, value]", with: "targets: [query, shared_expert]")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let run = try makeRun(path)
        assertMoETuneError(try run.buildOptimizer(run.prepareData()), contains: ["lora.targets", "no shared expert"])
    }

    func testPlanStepsCountsEpochsAndSchedulesTheRate() throws {
        let dir = try makeTempDir(self)
        let run = try makeRun(setUp(dir, training: "epochs: 2", extra: "schedule:\n  name: constant\n  warmup_steps: 2"))
        let data = try run.prepareData()
        let t = try run.buildOptimizer(data)
        // 24 examples in batches of 4: 6 micro-batches an epoch, 2 of them a step, 2 epochs.
        XCTAssertEqual(t.plan.perEpoch, 6)
        let steps = try run.planSteps(data, plan: t.plan)
        XCTAssertEqual(steps.totalSteps, 6)
        XCTAssertEqual(steps.schedule.total, 6)
        XCTAssertEqual((1...4).map { steps.schedule.lr(step: $0) }, [5e-3, 1e-2, 1e-2, 1e-2])
    }

    func testBuildStatesFitTheLargestMicroBatch() throws {
        let dir = try makeTempDir(self)
        let run = try makeRun(setUp(dir))
        let t = try run.buildOptimizer(run.prepareData())
        let (state, _) = try run.buildStates(t)
        let capacity = t.plan.capacity
        XCTAssertEqual(state.batchCapacity, capacity.rows)
        XCTAssertEqual(state.seqCapacity, capacity.seq)
        XCTAssertEqual(capacity.rows, 4)
        XCTAssertTrue(state.scoredOnly)
    }

    func testStartFromAnEmptyFolderIsStepZero() throws {
        let dir = try makeTempDir(self)
        let loop = try makeLoop(makeRun(setUp(dir)))
        XCTAssertNil(loop.resumed)
        XCTAssertEqual([loop.microIndex, loop.trainedTokens, loop.optimizer.t, loop.totalSteps], [0, 0, 0, 3])
        let saved = try TrainConfig.load(path: dir + "/out/config.yaml")
        XCTAssertEqual(saved.training.gradAccum, 2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/metrics.jsonl"))
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").count, 0)
    }

    func testRestoreFromACheckpointTakesItsStepAndParameters() throws {
        let dir = try makeTempDir(self)
        let path = try setUp(dir, training: "max_steps: 4\nsave_every: 2")
        var stepsSeen = 0
        var events = TrainerEvents()
        events.step = { _ in stepsSeen += 1 }
        events.shouldStop = { stepsSeen >= 2 }
        let first = try Trainer(config: try TrainConfig.load(path: path), configPath: path).run(events: events)
        XCTAssertEqual(first.stoppedAt, 2)
        let ck = try XCTUnwrap(TrainCheckpoint.list(outDir: dir + "/out").last)
        XCTAssertEqual(ck.step, 2)
        let loop = try makeLoop(makeRun(path), resumeFrom: ck.path)
        XCTAssertEqual(loop.resumed?.step, 2)
        XCTAssertEqual(loop.microIndex, 4, "2 steps of grad_accum 2")
        XCTAssertEqual(loop.optimizer.t, 2)
        XCTAssertEqual(loop.trainedTokens, first.trainedTokens)
        XCTAssertGreaterThan(loop.trainedTokens, 0)
        let saved = try PEFTAdapter.load(directory: ck.path, model: loop.model)
        XCTAssertEqual(params(loop.adapters), params(saved))
    }

    func testOneStepChangesTheAdapterWithAFiniteLoss() throws {
        let dir = try makeTempDir(self)
        let loop = try makeLoop(makeRun(setUp(dir)))
        try loop.begin()
        let before = params(loop.adapters)
        let record = try loop.trainStep(1)
        XCTAssertEqual(record.step, 1)
        XCTAssertEqual(record.totalSteps, 3)
        XCTAssertTrue(record.loss.isFinite)
        XCTAssertGreaterThan(record.loss, 0)
        XCTAssertGreaterThan(record.gradNorm, 0)
        // Cosine (the default) over 3 steps: 1e-2 x (1 + cos(pi / 3)) / 2 at step 1.
        XCTAssertEqual(record.lr, 7.5e-3, accuracy: 1e-12)
        let after = params(loop.adapters)
        XCTAssertNotEqual(before, after)
        XCTAssertGreaterThan(zip(before, after).filter { $0 != $1 }.count, after.count / 4)
        XCTAssertEqual(loop.microIndex, 2)
        XCTAssertEqual(loop.optimizer.t, 1)
        XCTAssertEqual(loop.trainedTokens, record.tokens)
        XCTAssertEqual(record.tokens, (0..<2).map { loop.plan.microBatch($0).countedTokens }.reduce(0, +))
        let lines = try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }
        XCTAssertEqual(lines.count, 1)
        XCTAssertEqual(try XCTUnwrap(lines.first?["loss"] as? Double), record.loss, accuracy: 1e-9 * record.loss)
    }

    func testEvaluateAndCheckpointWritesACheckpointAndStops() throws {
        let dir = try makeTempDir(self)
        let path = try setUp(dir, data: "train: \(dir)/a.jsonl\nvalid: \(dir)/t.jsonl", training: "max_steps: 3\nsave_every: 1\neval_every: 1")
        var stop = false
        var events = TrainerEvents()
        events.shouldStop = { stop }
        let loop = try makeLoop(makeRun(path, events: events))
        try loop.begin()
        let firstValid = try XCTUnwrap(loop.firstValid)
        try loop.trainStep(1)
        XCTAssertFalse(try loop.evaluateAndCheckpoint(step: 1))
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").map(\.step), [1])
        XCTAssertEqual(loop.lastCheckpoint, TrainCheckpoint.list(outDir: dir + "/out").last?.path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/adapter_model.safetensors"))
        XCTAssertNotEqual(loop.lastValid, firstValid, "step 1's validation")
        let evals = try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == "eval" }
        XCTAssertEqual(evals.compactMap { $0["step"] as? Int }, [0, 1])
        // A stop asked for: a checkpoint there, and the loop ends.
        try loop.trainStep(2)
        stop = true
        XCTAssertTrue(try loop.evaluateAndCheckpoint(step: 2))
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").map(\.step), [1, 2])
        let summary = try loop.finish(stoppedAt: 2)
        XCTAssertEqual(summary.stoppedAt, 2)
        XCTAssertEqual(summary.checkpoint, TrainCheckpoint.list(outDir: dir + "/out").last?.path)
    }

    func testStepsByHandGiveTheTrainersAdapter() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        let whole = try setUp(a, training: "max_steps: 4\neval_every: 2", extra: "moe:\n  jitter: 0.01")
        let summary = try Trainer(config: try TrainConfig.load(path: whole), configPath: whole).run()
        let loop = try makeLoop(makeRun(setUp(b, training: "max_steps: 4\neval_every: 2", extra: "moe:\n  jitter: 0.01")))
        try loop.begin()
        for s in 1...4 {
            try loop.trainStep(s)
            XCTAssertFalse(try loop.evaluateAndCheckpoint(step: s))
        }
        let byHand = try loop.finish(stoppedAt: nil)
        XCTAssertEqual(byHand.steps, summary.steps)
        XCTAssertEqual(byHand.trainedTokens, summary.trainedTokens)
        let adapter = "/out/adapter_model.safetensors"
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: b + adapter)), try Data(contentsOf: URL(fileURLWithPath: a + adapter)))
        XCTAssertEqual(TrainCheckpoint.list(outDir: b + "/out").map(\.step), [4])
    }
}
