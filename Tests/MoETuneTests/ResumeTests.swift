import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Checkpoints and --resume: a run stopped after step 3 and resumed ends with the adapter
/// an uninterrupted run writes, bit for bit (dropout, grad_accum 2, MoE jitter and router
/// noise on); a changed config is refused naming the keys; the last K checkpoints are kept;
/// a full disk while checkpointing keeps the last good checkpoint and adapter; out_dir is
/// locked and may not hold the config or the model.
final class ResumeTests: XCTestCase {
    func setUp(_ dir: String, extra: String = "") throws -> String {
        var text = ""
        for i in 0..<24 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: \(dir)/train.jsonl
          valid: \(dir)/train.jsonl
        lora:
          rank: 4
          dropout: 0.1
          targets: [query, value, mlp]
        optimizer:
          lr: 1.0e-2
        schedule:
          warmup_steps: 2
        moe:
          jitter: 0.01
          noise_std: 0.1
        training:
          batch_size: 4
          grad_accum: 2
          max_steps: 6
          eval_every: 2
          eval_batches: 2
          max_seq_len: 32
          out_dir: \(dir)/out
        \(extra)
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    @discardableResult
    func train(_ path: String, overrides: [String] = [], resume: Bool = false, overwrite: Bool = false,
               stopAfter: Int? = nil) throws -> TrainSummary {
        let cfg = try TrainConfig.load(path: path, overrides: overrides)
        var events = TrainerEvents()
        var steps = 0
        events.step = { _ in steps += 1 }
        events.shouldStop = { stopAfter.map { steps >= $0 } ?? false }
        return try Trainer(config: cfg, configPath: path).run(overwrite: overwrite, resume: resume, events: events)
    }

    func adapterBytes(_ dir: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: dir + "/out/adapter_model.safetensors"))
    }

    func testStopAndResumeEqualsAnUninterruptedRun() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        try train(try setUp(a))
        let cb = try setUp(b)
        let stopped = try train(cb, stopAfter: 3)
        XCTAssertEqual(stopped.stoppedAt, 3)
        XCTAssertEqual(stopped.checkpoint, b + "/out/checkpoints/step-3")
        XCTAssertNotEqual(try adapterBytes(a), try adapterBytes(b), "the adapter at step 3 is written and differs from step 6's")
        let resumed = try train(cb, resume: true)
        XCTAssertEqual(resumed.resumedFrom, 3)
        XCTAssertEqual(resumed.steps, 6)
        XCTAssertEqual(try adapterBytes(a), try adapterBytes(b), "resumed adapter must be bit-identical")
        // metrics.jsonl continues without duplicate steps, and equals the uninterrupted run's losses.
        func steps(_ dir: String) throws -> [(Int, Double)] {
            try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }
                .map { ($0["step"] as! Int, $0["loss"] as! Double) }
        }
        XCTAssertEqual(try steps(b).map(\.0), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try steps(b).map(\.1), try steps(a).map(\.1))
        let evals = try MetricsLog.read(path: b + "/out/metrics.jsonl").filter { $0["type"] as? String == "eval" }.map { $0["step"] as! Int }
        XCTAssertEqual(evals, [0, 2, 4, 6])
    }

    func testResumeAfterALoggedButUncheckpointedStepDropsItsLines() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        try train(try setUp(a))
        let cb = try setUp(b)
        try train(cb, overrides: ["training.save_every=2"], stopAfter: 3)
        // As if killed after step 5 was logged but before its checkpoint: drop step-3 and
        // append lines of steps 4 and 5 that a resume must discard.
        try FileManager.default.removeItem(atPath: b + "/out/checkpoints/step-3")
        let log = try MetricsLog(path: b + "/out/metrics.jsonl", resumeAfter: 3)
        try log.write(["type": "step", "step": 4, "loss": 9.0])
        try log.write(["type": "step", "step": 5, "loss": 9.0])
        try train(cb, overrides: ["training.save_every=2"], resume: true)
        XCTAssertEqual(try adapterBytes(a), try adapterBytes(b))
        let steps = try MetricsLog.read(path: b + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }.map { $0["step"] as! Int }
        XCTAssertEqual(steps, [1, 2, 3, 4, 5, 6])
    }

    func testSGDMomentumResumesExactly() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        let sgd = ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true", "optimizer.lr=0.05"]
        try train(try setUp(a), overrides: sgd)
        let cb = try setUp(b)
        try train(cb, overrides: sgd, stopAfter: 2)
        try train(cb, overrides: sgd, resume: true)
        XCTAssertEqual(try adapterBytes(a), try adapterBytes(b))
    }

    func testChangedConfigIsRefusedNamingTheKeys() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        try train(c, stopAfter: 2)
        assertMoETuneError(try train(c, overrides: ["lora.rank=8", "optimizer.lr=0.5"], resume: true),
                           contains: ["c.yaml", "lora.rank: 4 -> 8", "optimizer.lr: 0.01 -> 0.5", "checkpoints/step-2"])
        assertMoETuneError(try train(c, overrides: ["training.max_steps=1"], resume: true),
                           contains: ["training.max_steps", "at step 2"])
        // Keys that cannot change the adapter may change; max_steps may grow.
        let s = try train(c, overrides: ["training.eval_every=3", "training.log_every=2", "training.max_steps=8"], resume: true)
        XCTAssertEqual(s.steps, 8)
    }

    func testKeepsTheLastCheckpointsAndRefusesResumeWithoutOne() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        assertMoETuneError(try train(c, resume: true), contains: ["training.out_dir", "no run to resume"])
        try train(c, overrides: ["training.save_every=1", "training.keep_checkpoints=2"])
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").map(\.step), [5, 6])
        assertMoETuneError(try train(c), contains: ["already holds a training run", "--resume", "--overwrite"])
        // --overwrite starts over: the old run's checkpoints go, nothing else.
        try Data("mine".utf8).write(to: URL(fileURLWithPath: dir + "/out/notes.txt"))
        try train(c, overwrite: true, stopAfter: 1)
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").map(\.step), [1])
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/notes.txt"))
    }

    func testFullDiskWhileCheckpointingKeepsTheLastGoodOne() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        AtomicFile.injectedError = { $0.contains("step-4") && $0.hasSuffix("state.safetensors") ? ENOSPC : nil }
        defer { AtomicFile.injectedError = nil }
        assertMoETuneError(try train(c, overrides: ["training.save_every=2"]), contains: ["no space left on device (needed about", "MB at"])
        AtomicFile.injectedError = nil
        XCTAssertEqual(TrainCheckpoint.list(outDir: dir + "/out").map(\.step), [2])
        let names = try FileManager.default.contentsOfDirectory(atPath: dir + "/out/checkpoints")
        XCTAssertEqual(names, ["step-2"], "no temporary is left behind")
        let loaded = try Transformer.load(directory: Fixtures.dir("mixtral"))
        XCTAssertNoThrow(try PEFTAdapter.load(directory: dir + "/out", model: loaded), "the step-2 adapter stays in out_dir")
        // The run resumes from it and finishes.
        XCTAssertEqual(try train(c, overrides: ["training.save_every=2"], resume: true).steps, 6)
    }

    func testOutDirMayNotHoldTheConfigOrModelAndIsLocked() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        assertMoETuneError(try train(c, overrides: ["training.out_dir=\(dir)"]), contains: ["training.out_dir", "holds the config file"])
        assertMoETuneError(try train(c, overrides: ["training.out_dir=\(Fixtures.root)"]), contains: ["training.out_dir", "holds the model"])
        // Inside the model folder (directly, deeper, or through a link to it): refused, nothing written there.
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: Fixtures.dir("mixtral"), toPath: model)
        let before = try FileManager.default.contentsOfDirectory(atPath: model).sorted()
        try FileManager.default.createSymbolicLink(atPath: dir + "/model-link", withDestinationPath: model)
        for out in [model + "/adapter", model + "/runs/one", dir + "/model-link/adapter"] {
            assertMoETuneError(try train(c, overrides: ["model=\(model)", "training.out_dir=\(out)"]), contains: ["training.out_dir", "lies inside the model folder"])
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: model).sorted(), before, "nothing is written into the model folder")
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let lock = try DirectoryLock(directory: dir + "/out")
        assertMoETuneError(try train(c), contains: ["in use by another moe-tune run (pid \(getpid()))"])
        withExtendedLifetime(lock) {}
    }
}
