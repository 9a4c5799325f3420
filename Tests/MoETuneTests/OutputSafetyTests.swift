import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Outputs never destroy what a user had: merge/quantize never replace a file, never write
/// over their inputs, and --overwrite replaces only folders moe-tune wrote; whole-file
/// writes are atomic, a full disk is a one-line error naming the size, metrics lines are
/// whole or absent, and an out_dir is locked while a run uses it.
final class OutputSafetyTests: XCTestCase {
    let adapter = Fixtures.dir("train-mixtral")

    func merge(_ out: String, model: String = Fixtures.dir("mixtral"), adapter: String? = nil, overwrite: Bool = false) throws {
        var o = Merger.Options()
        o.overwrite = overwrite
        _ = try Merger.merge(modelDir: model, adapters: [(adapter ?? self.adapter, 1)], outDir: out, options: o)
    }

    func testMergeAndQuantizeNeverReplaceAFile() throws {
        let dir = try makeTempDir(self)
        let file = dir + "/precious.txt"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
        for overwrite in [false, true] {
            assertMoETuneError(try merge(file, overwrite: overwrite), contains: ["precious.txt", "is a file"])
            assertMoETuneError(try Quantizer.quantize(modelDir: Fixtures.dir("llama"), outDir: file, overwrite: overwrite),
                               contains: ["precious.txt", "is a file"])
        }
        // The command line says so in one line and exits 1.
        for args in [["merge", "--model", Fixtures.dir("mixtral"), "--adapter", adapter, "--out", file, "--overwrite"],
                     ["quantize", "--model", Fixtures.dir("llama"), "--out", file, "--overwrite"]] {
            let r = try runMoETune(args)
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(file): exists and is a file"), r.err)
        }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "keep me")
    }

    func testOutputThatIsOrContainsAnInputIsRefused() throws {
        let dir = try makeTempDir(self)
        // Copies of the inputs inside dir, so an accident could only hurt the copies.
        let model = dir + "/models/mixtral", adapterCopy = dir + "/models/adapter"
        try FileManager.default.createDirectory(atPath: dir + "/models", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.dir("mixtral"), toPath: model)
        try FileManager.default.copyItem(atPath: adapter, toPath: adapterCopy)
        for out in [dir + "/models", model, adapterCopy, dir + "/models/../models/"] {
            for overwrite in [false, true] {
                assertMoETuneError(try merge(out, model: model, adapter: adapterCopy, overwrite: overwrite), contains: ["--out", "the input"])
            }
            assertMoETuneError(try Quantizer.quantize(modelDir: model, outDir: out, overwrite: true), contains: ["--out"])
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: model + "/model.safetensors"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: adapterCopy + "/adapter_model.safetensors"))
    }

    /// Review: an --out inside the model's or an adapter's folder (`--out BASE/sub`) was
    /// written for Hugging Face output (merge, quantize): a later load of that model folder
    /// would scan it. Refused now for every output format, as GGUF output already was, in one
    /// line naming both paths, also through a symbolic link to the input and when nested deeper.
    func testOutputInsideAnInputIsRefused() throws {
        let dir = try makeTempDir(self)
        let model = dir + "/models/mixtral", adapterCopy = dir + "/models/adapter", link = dir + "/link"
        try FileManager.default.createDirectory(atPath: dir + "/models", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.dir("mixtral"), toPath: model)
        try FileManager.default.copyItem(atPath: adapter, toPath: adapterCopy)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: model)
        let ggufModel = dir + "/models/mixtral.gguf"
        try FileManager.default.copyItem(atPath: Fixtures.dir("gguf/arch/mixtral.gguf"), toPath: ggufModel)
        let before = try FileManager.default.subpathsOfDirectory(atPath: dir + "/models").sorted()
        for (out, input) in [(model + "/sub", model), (model + "/sub/deeper", model), (link + "/sub", model),
                             (adapterCopy + "/sub", adapterCopy), (model + "/../adapter/sub", adapterCopy)] {
            for overwrite in [false, true] {
                assertMoETuneError(try merge(out, model: model, adapter: adapterCopy, overwrite: overwrite),
                                   contains: [out, "--out lies inside the input", input])
            }
            if input == model {
                assertMoETuneError(try Quantizer.quantize(modelDir: model, outDir: out, overwrite: true),
                                   contains: [out, "--out lies inside the input", model])
            }
            // GGUF outputs (merge --format gguf from a folder or a GGUF file, export-lora).
            let g = out + ".gguf"
            assertMoETuneError(try GGUFExport.mergedModel(model: model, adapters: [(adapterCopy, 1)], out: g, type: .f32, overwrite: true),
                               contains: [g, "lies inside the input"])
            assertMoETuneError(try GGUFExport.loraAdapter(model: model, adapter: adapterCopy, out: g, overwrite: true),
                               contains: [g, "lies inside the input"])
            if input == adapterCopy {
                assertMoETuneError(try GGUFExport.mergedModel(model: ggufModel, adapters: [(adapterCopy, 1)], out: g, type: .f32, overwrite: true),
                                   contains: [g, "lies inside the input", adapterCopy])
                assertMoETuneError(try GGUFExport.loraAdapter(model: ggufModel, adapter: adapterCopy, out: g, overwrite: true),
                                   contains: [g, "lies inside the input", adapterCopy])
            }
        }
        // The command line: one line naming both, exit 1.
        for args in [["merge", "--model", model, "--adapter", adapterCopy, "--out", model + "/merged"],
                     ["quantize", "--model", model, "--out", model + "/nf4"],
                     ["merge", "--model", model, "--adapter", adapterCopy, "--format", "gguf", "--out", adapterCopy + "/m.gguf"]] {
            let r = try runMoETune(args)
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(args.last!): --out "), r.err)
            XCTAssertTrue(r.err.contains("lies inside the input"), r.err)
            XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        }
        // Nothing was written into the inputs.
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: dir + "/models").sorted(), before)
        // A sibling of the model folder is fine.
        XCTAssertNoThrow(try merge(dir + "/models/merged", model: model, adapter: adapterCopy))
    }

    func testOverwriteReplacesOnlyMoETuneFolders() throws {
        let dir = try makeTempDir(self)
        let foreign = dir + "/foreign"
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: foreign + "/notes.txt"))
        assertMoETuneError(try merge(foreign), contains: ["foreign", "--overwrite"])
        assertMoETuneError(try merge(foreign, overwrite: true), contains: ["foreign", "not written by moe-tune", OutputFolder.markerName])
        XCTAssertTrue(FileManager.default.fileExists(atPath: foreign + "/notes.txt"))
        // A folder moe-tune wrote carries the marker and may be replaced with --overwrite.
        let out = dir + "/merged"
        try merge(out)
        XCTAssertTrue(OutputFolder.isMarked(out))
        assertMoETuneError(try merge(out), contains: ["merged", "--overwrite"])
        XCTAssertNoThrow(try merge(out, overwrite: true))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/model.safetensors"))
        // No temporaries are left beside it; a killed run's staging folder is cleaned at the next start.
        let stale = dir + "/.merged2.moe-tune-tmp-999999999"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        try merge(dir + "/merged2")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["foreign", "merged", "merged2"])
    }

    func testAtomicWriteReportsAFullDiskAndKeepsTheOldFile() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/a.bin"
        try AtomicFile.write(Data("old".utf8), to: path)
        AtomicFile.injectedError = { $0 == path ? ENOSPC : nil }
        defer { AtomicFile.injectedError = nil }
        assertMoETuneError(try AtomicFile.write(Data(count: 3 << 20), to: path),
                           contains: ["no space left on device (needed about 3 MB at \(path))"])
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "old")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["a.bin"], "no temporary is left behind")
    }

    func testMetricsLinesAreWholeOrAbsent() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/metrics.jsonl"
        let log = try MetricsLog(path: path)
        try log.write(["type": "step", "step": 1, "loss": 1.5])
        AtomicFile.injectedError = { $0 == path ? EIO : nil }
        assertMoETuneError(try log.write(["type": "step", "step": 2, "loss": 1.25]), contains: ["metrics.jsonl", "cannot write"])
        AtomicFile.injectedError = nil
        assertMoETuneError(try log.write(["type": "step", "step": 2, "loss": Double.nan]), contains: ["metrics.jsonl", "not finite"])
        try log.write(["type": "step", "step": 2, "loss": 1.0])
        let lines = try MetricsLog.read(path: path)
        XCTAssertEqual(lines.map { $0["step"] as? Int }, [1, 2])
        // Resuming after step 1 keeps the lines up to it and drops the rest.
        let again = try MetricsLog(path: path, resumeAfter: 1)
        try again.write(["type": "step", "step": 2, "loss": 0.5])
        XCTAssertEqual(try MetricsLog.read(path: path).map { $0["loss"] as? Double }, [1.5, 0.5])
    }

    func testADirectoryLockRefusesASecondUserNamingThePid() throws {
        let dir = try makeTempDir(self)
        var lock: DirectoryLock? = try DirectoryLock(directory: dir)
        assertMoETuneError(try DirectoryLock(directory: dir), contains: ["in use by another moe-tune run", "pid \(getpid())"])
        XCTAssertNotNil(lock)
        lock = nil
        XCTAssertNoThrow(try DirectoryLock(directory: dir), "released when its owner goes")
    }
}
