import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Checkpoints that prove themselves: each records the size and SHA-256 of every file it
/// holds and of the training data it was made from; --resume refuses a damaged checkpoint
/// or changed data naming the file, and --accept-data-change continues on edited data,
/// saying so and recording it in metrics.jsonl.
final class CheckpointProofTests: XCTestCase {
    func setUp(_ dir: String) throws -> String {
        var text = ""
        for i in 0..<24 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: \(dir)/train.jsonl}
        lora: {rank: 4, targets: [query, value]}
        training: {batch_size: 4, max_steps: 6, max_seq_len: 32, out_dir: \(dir)/out}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    @discardableResult
    func train(_ path: String, resume: Bool = false, accept: Bool = false, stopAfter: Int? = nil,
               log: ((String) -> Void)? = nil) throws -> TrainSummary {
        var events = TrainerEvents()
        var steps = 0
        events.step = { _ in steps += 1 }
        events.log = log ?? { _ in }
        events.shouldStop = { stopAfter.map { steps >= $0 } ?? false }
        return try Trainer(config: try TrainConfig.load(path: path), configPath: path).run(resume: resume, acceptDataChange: accept, events: events)
    }

    /// Flips one byte of `path` at `offset` (from the end when negative).
    func flip(_ path: String, at offset: Int) throws {
        var d = try Data(contentsOf: URL(fileURLWithPath: path))
        let i = offset >= 0 ? offset : d.count + offset
        d[i] ^= 0x01
        try d.write(to: URL(fileURLWithPath: path))
    }

    func testTheManifestRecordsEveryFileAndTheData() throws {
        let dir = try makeTempDir(self)
        try train(try setUp(dir), stopAfter: 3)
        let ck = dir + "/out/checkpoints/step-3"
        let m = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ck + "/manifest.json"))) as? [String: Any])
        let files = try XCTUnwrap(m["files"] as? [[String: Any]])
        XCTAssertEqual(files.map { $0["path"] as? String }, TrainCheckpoint.files)
        for f in files {
            let (size, digest) = try SHA256.file(ck + "/" + (f["path"] as! String))
            XCTAssertEqual(f["size"] as? Int, size)
            XCTAssertEqual(f["sha256"] as? String, digest)
        }
        let data = try XCTUnwrap(m["data"] as? [[String: Any]])
        XCTAssertEqual(data.map { $0["path"] as? String }, [dir + "/train.jsonl"])
        XCTAssertEqual(data.first?["sha256"] as? String, try SHA256.file(dir + "/train.jsonl").sha256)
        XCTAssertEqual(try TrainCheckpoint.verify(path: ck)?.map(\.path), [dir + "/train.jsonl"])
    }

    /// One byte of the training file changed: --resume is refused naming it; with
    /// --accept-data-change the run continues, says so and records it in metrics.jsonl.
    func testChangedTrainingDataIsRefusedUnlessAccepted() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        try train(c, stopAfter: 3)
        let data = dir + "/train.jsonl"
        try flip(data, at: 20)   // "Add 0 and 1." becomes "Add 0 and 0." or so: same size
        assertMoETuneError(try train(c, resume: true),
                           contains: [data, "changed: same size, SHA-256", "since the checkpoint \(dir)/out/checkpoints/step-3 was made from it", "--accept-data-change"])
        // The command line says the same in one line and exits 1.
        let r = try runMoETune(["train", "--config", c, "--resume"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.split(separator: "\n").last?.hasPrefix("moe-tune: error: \(data): changed: same size") ?? false, r.err)
        // A size change is named as one.
        FileHandle(forWritingAtPath: data).map { h in h.seekToEndOfFile(); h.write(Data("{\"text\": \"more\"}\n".utf8)); h.closeFile() }
        assertMoETuneError(try train(c, resume: true), contains: [data, "bytes then", "now"])
        // Accepted: the run continues to its end, and says so.
        var lines: [String] = []
        let s = try train(c, resume: true, accept: true, log: { lines.append($0) })
        XCTAssertEqual(s.resumedFrom, 3)
        XCTAssertEqual(s.steps, 6)
        XCTAssertTrue(lines.contains { $0.hasPrefix("data changed since checkpoint step 3: \(data) changed") && $0.contains("--accept-data-change") }, "\(lines)")
        let metrics = try MetricsLog.read(path: dir + "/out/metrics.jsonl")
        let change = try XCTUnwrap(metrics.first { $0["type"] as? String == "data_change" })
        XCTAssertEqual(change["resumed_after_step"] as? Int, 3)
        XCTAssertEqual(change["accepted"] as? Bool, true)
        XCTAssertEqual((change["files"] as? [[String: Any]])?.first?["path"] as? String, data)
        XCTAssertEqual(metrics.filter { $0["type"] as? String == "step" }.compactMap { $0["step"] as? Int }, Array(1...6))
        // The new checkpoint records the edited data: a later resume needs no flag.
        XCTAssertEqual(try TrainCheckpoint.verify(path: dir + "/out/checkpoints/step-6")?.first?.sha256, try SHA256.file(data).sha256)
        // --accept-data-change alone is refused: it goes with --resume.
        let alone = try runMoETune(["train", "--config", c, "--accept-data-change", "--overwrite"])
        XCTAssertEqual(alone.status, 1, alone.err)
        XCTAssertTrue(alone.err.contains("--accept-data-change goes with --resume"), alone.err)
    }

    /// One byte of state.safetensors (or of the checkpoint's adapter, or a missing file):
    /// --resume is refused naming the file, before anything is loaded from it.
    func testADamagedCheckpointIsRefusedNamingTheFile() throws {
        let dir = try makeTempDir(self)
        let c = try setUp(dir)
        try train(c, stopAfter: 3)
        let ck = dir + "/out/checkpoints/step-3"
        let pristine = dir + "/pristine"
        try FileManager.default.copyItem(atPath: ck, toPath: pristine)
        func reset() throws {
            try FileManager.default.removeItem(atPath: ck)
            try FileManager.default.copyItem(atPath: pristine, toPath: ck)
        }
        try flip(ck + "/state.safetensors", at: -5)   // a parameter's byte, past the header
        assertMoETuneError(try train(c, resume: true), contains: [ck + "/state.safetensors", "is damaged", "SHA-256", "remove \(ck)"])
        let r = try runMoETune(["train", "--config", c, "--resume"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.split(separator: "\n").last?.hasPrefix("moe-tune: error: \(ck)/state.safetensors: is damaged") ?? false, r.err)
        // Even --accept-data-change does not accept a damaged checkpoint.
        assertMoETuneError(try train(c, resume: true, accept: true), contains: [ck + "/state.safetensors", "is damaged"])
        try reset()
        try flip(ck + "/adapter_model.safetensors", at: -1)
        assertMoETuneError(try train(c, resume: true), contains: [ck + "/adapter_model.safetensors", "is damaged"])
        try reset()
        try FileManager.default.removeItem(atPath: ck + "/config.yaml")
        assertMoETuneError(try train(c, resume: true), contains: [ck + "/config.yaml", "is missing from the checkpoint"])
        try reset()
        try Data("{".utf8).write(to: URL(fileURLWithPath: ck + "/manifest.json"))
        assertMoETuneError(try train(c, resume: true), contains: [ck + "/manifest.json", "is damaged"])
        // Intact again: the resume runs to the end.
        try reset()
        XCTAssertEqual(try train(c, resume: true).steps, 6)
    }

    func testStreamingSHA256MatchesOneShot() throws {
        let dir = try makeTempDir(self)
        var rng = SplitMix64(seed: 9)
        let bytes = (0..<(1 << 20) + 77).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/f"))
        let whole = SHA256.hex(bytes)
        XCTAssertEqual(try SHA256.file(dir + "/f").sha256, whole)
        XCTAssertEqual(try SHA256.file(dir + "/f").size, bytes.count)
        for cut in [1, 63, 64, 65, 1000] {
            var h = SHA256.Hasher()
            var i = 0
            while i < bytes.count {
                let n = min(cut, bytes.count - i)
                bytes[i..<(i + n)].withUnsafeBytes { h.update($0) }
                i += n
                if i > 200_000 && cut < 1000 { bytes[i...].withUnsafeBytes { h.update($0) }; i = bytes.count }
            }
            XCTAssertEqual(h.finish(), whole, "pieces of \(cut)")
        }
    }
}
