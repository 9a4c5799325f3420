import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The one output rule (OutputFolder) for every command that writes: an output another
/// moe-tune process holds is refused naming its pid; --overwrite replaces only what moe-tune
/// itself wrote there, of the same kind: never a training run from merge or quantize,
/// never a foreign file that merely ends in .gguf, never a foreign Modelfile.
final class OutputRuleTests: XCTestCase {
    let adapter = Fixtures.dir("train-mixtral")

    func trainConfig(_ dir: String, steps: Int) throws -> String {
        var text = ""
        for i in 0..<24 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: \(dir)/train.jsonl}
        lora: {rank: 4, targets: [query, value]}
        training: {batch_size: 4, max_steps: \(steps), max_seq_len: 32, save_every: 1, out_dir: \(dir)/out}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    func listing(_ dir: String) -> [String] {
        ((try? FileManager.default.subpathsOfDirectory(atPath: dir)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    /// D1: `train ... &` then `merge --overwrite --out OUT_DIR` exited 0 and removed the
    /// running run's checkpoints and metrics. Refused now naming the run's pid, for merge,
    /// quantize, merge --format gguf and export-lora into that folder; the run goes on.
    func testAFolderARunningTrainHoldsIsRefusedNamingItsPid() throws {
        let dir = try makeTempDir(self)
        let c = try trainConfig(dir, steps: 100_000)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: moeTuneBinary)
        p.arguments = ["train", "--config", c]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        let out = dir + "/out"
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning, Date() < deadline, TrainCheckpoint.list(outDir: out).isEmpty { usleep(10_000) }
        XCTAssertTrue(p.isRunning)
        XCTAssertEqual(DirectoryLock.holder(of: out), "\(p.processIdentifier)")
        for args in [["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", out, "--overwrite"],
                     ["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", out],
                     ["quantize", "--model", Fixtures.dir("llama"), "--out", out, "--overwrite"]] {
            let r = try runMoETune(args)
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertEqual(r.err, "moe-tune: error: \(out): is in use by another moe-tune run (pid \(p.processIdentifier)); wait for it to finish or choose another --out\n")
        }
        for args in [["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--format", "gguf", "--out", out + "/m.gguf", "--overwrite"],
                     ["export-lora", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", out + "/a.gguf", "--overwrite"]] {
            let r = try runMoETune(args)
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.contains("in use by another moe-tune run (pid \(p.processIdentifier))"), r.err)
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        }
        XCTAssertTrue(p.isRunning, "the run goes on")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/metrics.jsonl"))
        XCTAssertFalse(TrainCheckpoint.list(outDir: out).isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/m.gguf"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/Modelfile"))
    }

    /// D1, without a running train: `merge --overwrite` onto a train out_dir deleted the
    /// adapter and checkpoints silently. A training run is not merge's to replace.
    func testOverwriteNeverReplacesATrainingRunWithAModel() throws {
        let dir = try makeTempDir(self)
        let c = try trainConfig(dir, steps: 2)
        _ = try Trainer(config: try TrainConfig.load(path: c), configPath: c).run()
        let out = dir + "/out"
        let before = listing(out)
        XCTAssertTrue(before.contains("adapter_model.safetensors") && before.contains("checkpoints/step-2"), "\(before)")
        var o = Merger.Options()
        o.overwrite = true
        assertMoETuneError(try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(adapter, 1)], outDir: out, options: o),
                           contains: [out, "holds a training run", "--overwrite replaces only a model folder"])
        assertMoETuneError(try Quantizer.quantize(modelDir: Fixtures.dir("llama"), outDir: out, overwrite: true),
                           contains: [out, "holds a training run"])
        let r = try runMoETune(["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", out, "--overwrite"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(out): holds a training run (written by moe-tune train)"), r.err)
        XCTAssertEqual(listing(out), before, "nothing of the run is removed")
        // And the other way: train into a model folder merge wrote is refused too.
        let merged = dir + "/merged"
        _ = try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(adapter, 1)], outDir: merged, options: Merger.Options())
        let mergedBefore = listing(merged)
        for overwrite in [false, true] {
            assertMoETuneError(try Trainer(config: try TrainConfig.load(path: c, overrides: ["training.out_dir=\(merged)"]), configPath: c).run(overwrite: overwrite),
                               contains: ["training.out_dir", "holds a model folder written by moe-tune merge"])
        }
        XCTAssertEqual(listing(merged), mergedBefore)
        // A merged folder is still replaced by merge --overwrite.
        XCTAssertNoThrow(try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(adapter, 1)], outDir: merged, options: o))
    }

    /// train --overwrite removed adapter_model.safetensors and adapter_config.json from any
    /// folder, a downloaded adapter's included. Only a run moe-tune wrote is removed now.
    func testTrainOverwriteRemovesOnlyARunMoETuneWrote() throws {
        let dir = try makeTempDir(self)
        let c = try trainConfig(dir, steps: 1)
        let foreign = dir + "/out"
        try FileManager.default.copyItem(atPath: adapter, toPath: foreign)
        try? FileManager.default.removeItem(atPath: foreign + "/" + OutputFolder.markerName)
        let before = listing(foreign)
        assertMoETuneError(try Trainer(config: try TrainConfig.load(path: c), configPath: c).run(overwrite: true),
                           contains: ["training.out_dir", "was not written by moe-tune", "--overwrite removes only a run moe-tune wrote"])
        XCTAssertEqual(listing(foreign), before)
    }

    /// D10: `merge --format gguf --overwrite` and `export-lora --overwrite` replaced any file
    /// whose name ends in .gguf (a text file too) and any Modelfile. Only a GGUF that carries
    /// moe-tune's key (and the Modelfile export-lora writes) is replaced now.
    func testOverwriteReplacesOnlyMoETunesOwnGGUFAndModelfile() throws {
        let dir = try makeTempDir(self)
        let text = dir + "/notes.gguf", foreignGGUF = dir + "/theirs.gguf"
        try Data("my notes\n".utf8).write(to: URL(fileURLWithPath: text))
        try FileManager.default.copyItem(atPath: Fixtures.dir("gguf/arch/mixtral.gguf"), toPath: foreignGGUF)
        let foreignBytes = try Data(contentsOf: URL(fileURLWithPath: foreignGGUF))
        for out in [text, foreignGGUF] {
            for args in [["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--format", "gguf", "--out", out, "--overwrite"],
                         ["export-lora", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", out, "--overwrite"]] {
                let r = try runMoETune(args)
                XCTAssertEqual(r.status, 1, r.err)
                XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(out): was not written by moe-tune (not a GGUF file with moe-tune's moe_tune.writer key)"), r.err)
                XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
            }
        }
        XCTAssertEqual(try String(contentsOfFile: text, encoding: .utf8), "my notes\n")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: foreignGGUF)), foreignBytes)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/Modelfile"))

        // moe-tune's own outputs carry the key and are replaced with --overwrite (not without).
        let tiny = Fixtures.dir("gguf/tiny-llama"), base = tiny + "/model.gguf"
        let cfgPath = Fixtures.root + "/../../../configs/demo.yaml"
        let cfg = try TrainConfig.load(path: cfgPath, overrides: [
            "model=\(base)", "training.max_steps=1", "training.out_dir=\(dir)/lora", "data.train=\(tiny)/eval.jsonl", "data.valid=null",
            "data.test=null", "training.eval_every=0", "training.batch_size=2", "lora.targets=[query, value]"])
        _ = try Trainer(config: cfg, configPath: cfgPath).run()
        let merged = dir + "/merged.gguf"
        _ = try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1)], out: merged, type: .f32, overwrite: false)
        XCTAssertEqual(try GGUFFile(path: merged).string(GGUFFile.writerKey), "merge")
        assertMoETuneError(try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1)], out: merged, type: .f32, overwrite: false),
                           contains: [merged, "already exists", "--overwrite"])
        XCTAssertNoThrow(try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1)], out: merged, type: .f16, overwrite: true))
        let lora = dir + "/lora.gguf"
        _ = try GGUFExport.loraAdapter(model: base, adapter: dir + "/lora", out: lora, overwrite: false)
        XCTAssertEqual(try GGUFFile(path: lora).string(GGUFFile.writerKey), "export-lora")
        XCTAssertNoThrow(try GGUFExport.loraAdapter(model: base, adapter: dir + "/lora", out: lora, overwrite: true), "its own Modelfile is replaced too")

        // A Modelfile the user wrote is not replaced, even with --overwrite.
        let other = dir + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        try Data("FROM llama3\nSYSTEM my prompt\n".utf8).write(to: URL(fileURLWithPath: other + "/Modelfile"))
        assertMoETuneError(try GGUFExport.loraAdapter(model: base, adapter: dir + "/lora", out: other + "/a.gguf", overwrite: true),
                           contains: [other + "/Modelfile", "was not written by moe-tune"])
        XCTAssertEqual(try String(contentsOfFile: other + "/Modelfile", encoding: .utf8), "FROM llama3\nSYSTEM my prompt\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: other + "/a.gguf"))
    }
}
