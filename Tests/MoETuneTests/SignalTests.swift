import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The built moe-tune binary under signals: SIGINT after the first step ends with exit 130,
/// a checkpoint, the adapter and the resume command, and --resume finishes the run; SIGKILL
/// at a random step followed by --resume gives the uninterrupted run's adapter bit for bit;
/// a second SIGTERM exits 143 at once with every checkpoint on disk complete.
final class SignalTests: XCTestCase {
    var binary: String { moeTuneBinary }

    func setUp(_ dir: String, steps: Int, saveEvery: Int = 0) throws -> String {
        var text = ""
        for i in 0..<24 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: \(dir)/train.jsonl}
        lora: {rank: 4, dropout: 0.1, targets: [query, value, mlp]}
        moe: {jitter: 0.01}
        training: {batch_size: 4, grad_accum: 2, max_steps: \(steps), max_seq_len: 32, save_every: \(saveEvery), out_dir: \(dir)/out}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    /// Starts moe-tune with stdout and stderr going to files in `dir`.
    func start(_ args: [String], dir: String) throws -> Process {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw MoETuneError.invalid("moe-tune is not built at \(binary); run `swift build --build-tests` first")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        FileManager.default.createFile(atPath: dir + "/stdout", contents: nil)
        FileManager.default.createFile(atPath: dir + "/stderr", contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: dir + "/stdout")
        p.standardError = FileHandle(forWritingAtPath: dir + "/stderr")
        try p.run()
        return p
    }

    func finish(_ args: [String], dir: String) throws -> Int32 {
        let p = try start(args, dir: dir)
        p.waitUntilExit()
        return p.terminationStatus
    }

    func output(_ dir: String, _ name: String) -> String {
        (try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? ""
    }

    /// Waits until metrics.jsonl has logged `step` (or the process ended).
    func waitForStep(_ step: Int, in dir: String, process p: Process) {
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning, Date() < deadline {
            if let text = try? String(contentsOfFile: dir + "/out/metrics.jsonl", encoding: .utf8),
               text.contains("\"step\":\(step),") { return }
            usleep(2_000)
        }
    }

    func adapter(_ dir: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: dir + "/out/adapter_model.safetensors"))
    }

    func testSIGINTCheckpointsAndTheRunResumes() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir, steps: 40)
        let p = try start(["train", "--config", c], dir: dir)
        waitForStep(1, in: dir, process: p)
        XCTAssertTrue(p.isRunning, "the run ended before the signal: \(output(dir, "stderr"))")
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .exit)
        XCTAssertEqual(p.terminationStatus, 130, output(dir, "stderr"))
        let stdout = output(dir, "stdout")
        XCTAssertTrue(stdout.contains("resume with: moe-tune train --config \(c) --resume"), stdout)
        let checkpoints = TrainCheckpoint.list(outDir: dir + "/out")
        XCTAssertEqual(checkpoints.count, 1)
        let stoppedAt = checkpoints[0].step
        XCTAssertLessThan(stoppedAt, 40)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/adapter_model.safetensors"))
        XCTAssertEqual(try finish(["train", "--config", c, "--resume"], dir: dir), 0, output(dir, "stderr"))
        XCTAssertTrue(output(dir, "stderr").contains("resuming from \(dir)/out/checkpoints/step-\(stoppedAt)"))
        let steps = try MetricsLog.read(path: dir + "/out/metrics.jsonl").compactMap { $0["step"] as? Int }
        XCTAssertEqual(steps, Array(1...40))
    }

    func testSIGKILLAtARandomStepThenResumeEqualsTheUninterruptedRun() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        XCTAssertEqual(try finish(["train", "--config", try setUp(a, steps: 40, saveEvery: 4)], dir: a), 0, output(a, "stderr"))
        let c = try setUp(b, steps: 40, saveEvery: 4)
        let killAt = Int.random(in: 5...30)
        let p = try start(["train", "--config", c], dir: b)
        waitForStep(killAt, in: b, process: p)
        XCTAssertTrue(p.isRunning, "the run ended before the kill")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal)
        XCTAssertEqual(try finish(["train", "--config", c, "--resume"], dir: b), 0, output(b, "stderr"))
        XCTAssertEqual(try adapter(a), try adapter(b), "killed at step \(killAt) and resumed: the adapter must equal the uninterrupted run's")
        let steps = try MetricsLog.read(path: b + "/out/metrics.jsonl").compactMap { $0["step"] as? Int }
        XCTAssertEqual(steps, Array(1...40), "no duplicate or missing steps after the resume")
        let names = try FileManager.default.contentsOfDirectory(atPath: b + "/out") + FileManager.default.contentsOfDirectory(atPath: b + "/out/checkpoints")
        XCTAssertFalse(names.contains { $0.contains(".moe-tune-tmp-") }, "temporaries of the killed run are removed: \(names)")
    }

    func testASecondSIGTERMExitsAtOnceKeepingCompleteCheckpoints() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir, steps: 400, saveEvery: 2)
        let p = try start(["train", "--config", c], dir: dir)
        waitForStep(3, in: dir, process: p)
        kill(p.processIdentifier, SIGTERM)
        usleep(20_000)
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 143, output(dir, "stderr"))
        let stopped = TrainCheckpoint.list(outDir: dir + "/out").last?.step ?? 0
        XCTAssertLessThan(stopped, 400)
        // Whatever is in checkpoints/ under a final name is complete and resumable.
        let checkpoints = TrainCheckpoint.list(outDir: dir + "/out")
        XCTAssertFalse(checkpoints.isEmpty)
        for ck in checkpoints { XCTAssertNoThrow(try SafeTensorsFile(path: ck.path + "/state.safetensors")) }
        // And the run resumes from the newest: stop it again by SIGINT after its first step.
        let r = try start(["train", "--config", c, "--resume"], dir: dir)
        // (metrics.jsonl may still hold lines the killed run logged past its checkpoint: wait for the log line instead.)
        let deadline = Date().addingTimeInterval(60)
        while r.isRunning, Date() < deadline, !output(dir, "stderr").contains("resuming from") { usleep(2_000) }
        kill(r.processIdentifier, SIGINT)
        r.waitUntilExit()
        XCTAssertEqual(r.terminationStatus, 130, output(dir, "stderr"))
        XCTAssertTrue(output(dir, "stderr").contains("resuming from \(dir)/out/checkpoints/step-\(stopped)"), output(dir, "stderr"))
        XCTAssertGreaterThan(TrainCheckpoint.list(outDir: dir + "/out").last?.step ?? 0, stopped)
    }
}
