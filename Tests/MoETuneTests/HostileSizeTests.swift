import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Hostile sizes and values: config sizes out of range are refused naming the key; a batch
/// that cannot fit in memory is refused with an estimate; a JSONL line past the limit is
/// refused with FILE:LINE; a safetensors shape whose byte size overflows is refused; merge
/// refuses to write NaN weights naming the tensor; eval exits non-zero on a NaN loss and
/// --json then prints nothing; --max-new-tokens beyond the limit is refused.
final class HostileSizeTests: XCTestCase {
    func config(_ dir: String) throws -> String {
        var text = ""
        for i in 0..<8 { text += "{\"text\": \"line \(i)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: \(dir)/train.jsonl}
        training: {batch_size: 4, max_steps: 1, max_seq_len: 32, out_dir: \(dir)/out}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    func testConfigSizesAreRangeChecked() throws {
        let dir = try makeTempDir(self)
        let c = try config(dir)
        for (set, key) in [("training.batch_size=\(1 << 62)", "training.batch_size"), ("training.batch_size=10000000", "training.batch_size"),
                           ("training.grad_accum=\(Int.max)", "training.grad_accum"), ("training.max_seq_len=\(1 << 40)", "training.max_seq_len"),
                           ("training.max_steps=\(Int.max)", "training.max_steps")] {
            assertMoETuneError(try TrainConfig.load(path: c, overrides: [set]), contains: ["c.yaml", key, "at most"])
        }
        assertMoETuneError(try TrainConfig.load(path: c, overrides: ["training.max_steps=null", "training.epochs=1e18"]),
                           contains: ["c.yaml", "training.epochs", "at most"])
        assertMoETuneError(try TrainConfig.load(path: c, overrides: ["training.max_steps=null", "training.epochs=.nan"]),
                           contains: ["training.epochs"])
    }

    func testABatchThatCannotFitIsRefusedWithAnEstimate() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        for chunk in [nil, ForwardState.defaultHeadChunkRows(vocab: model.config.vocabSize)] {
            let bytes = MemoryEstimate.trainingBytes(config: model.config, rows: 10_000_000, seq: 512, headChunkRows: chunk)
            XCTAssertGreaterThan(bytes, MemoryEstimate.physicalBytes ?? 0)
            XCTAssertLessThan(MemoryEstimate.trainingBytes(config: model.config, rows: 4, seq: 32, headChunkRows: chunk), 1e8)
            XCTAssertTrue(bytes.isFinite)
        }
    }

    /// Review: the estimate counted the whole [N, V] logits, doubled, although training runs
    /// the head in row chunks (one [chunk, V] buffer, d logits written over it). It now counts
    /// the logits buffer a ForwardState allocates: chunk x V when chunked, N x V when whole (a
    /// head adapter with dropout), once. Checked against the buffer itself and by hand (exact:
    /// the counts are whole numbers far below 2^53).
    func testEstimateCountsTheLogitsBufferTheStateAllocates() throws {
        let c = try Transformer.load(directory: Fixtures.dir("mixtral")).config
        let v = c.vocabSize, seq = 64
        let defaultChunk = ForwardState.defaultHeadChunkRows(vocab: v)
        let rows = defaultChunk / seq + 3   // N = rows x seq > the default chunk: chunking matters
        let n = rows * seq
        for chunk in [nil, defaultChunk, 100, 1, n + 5] as [Int?] {
            let state = ForwardState(config: c, batch: rows, seq: seq, training: true, loraRank: 8, headChunkRows: chunk)
            let expected = (chunk.map { min($0, n) } ?? n) * v
            XCTAssertEqual(state.logits.count, expected, "\(String(describing: chunk))")
            XCTAssertEqual(MemoryEstimate.logitsFloats(config: c, rows: rows, seq: seq, headChunkRows: chunk), Double(expected))
            // The rest of the estimate does not depend on the head: whole minus chunked is
            // exactly the logits saved, 4 bytes each, counted once.
            let whole = MemoryEstimate.trainingBytes(config: c, rows: rows, seq: seq, headChunkRows: nil)
            let got = MemoryEstimate.trainingBytes(config: c, rows: rows, seq: seq, headChunkRows: chunk)
            XCTAssertEqual(whole - got, 4 * Double(n * v - expected), "\(String(describing: chunk))")
        }
    }

    func testALineLongerThanTheLimitIsRefusedWithFileAndLine() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/long.jsonl"
        let long = "{\"text\": \"" + String(repeating: "a", count: JSONL.defaultMaxLineBytes) + "\"}"
        try Data(("{\"text\": \"ok\"}\n" + long + "\n").utf8).write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try JSONL.readObjects(path: path), contains: ["long.jsonl:2", "longer than the limit", "data.max_line_bytes"])
        // The limit is the config's data.max_line_bytes while training.
        let c = try config(dir)
        assertMoETuneError(try Trainer(config: try TrainConfig.load(path: c, overrides: ["data.max_line_bytes=10"]), configPath: c).run(),
                           contains: ["train.jsonl:1", "limit of 10"])
        XCTAssertEqual(JSONL.maxLineBytes, JSONL.defaultMaxLineBytes, "the limit is restored after the run")
    }

    func testASafeTensorsShapeWhoseSizeOverflowsIsRefused() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/evil.safetensors"
        var header = Data("{\"w\":{\"dtype\":\"F64\",\"shape\":[8,\(288_230_376_151_711_872)],\"data_offsets\":[0,8]}}".utf8)
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        var file = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(header)
        file.append(Data(count: 8))
        try file.write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try SafeTensorsFile(path: path), contains: ["evil.safetensors", "'w'", "too large"])
    }

    func testOverlappingTensorsAreRefused() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/overlap.safetensors"
        var header = Data("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}".utf8)
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        var file = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(header)
        file.append(Data(count: 12))
        try file.write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try SafeTensorsFile(path: path), contains: ["overlap.safetensors", "'a' and 'b' overlap"])
    }

    func testADuplicateHeaderKeyIsRefused() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/dup.safetensors"
        var header = Data("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}, \"a\" :{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},\"__metadata__\":{\"x\":\"a\"}}".utf8)
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        var file = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(header)
        file.append(Data(count: 8))
        try file.write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try SafeTensorsFile(path: path), contains: ["dup.safetensors", "names 'a' twice"])
        XCTAssertNil(JSONDuplicateKeys.firstDuplicate(in: Data("{\"a\":{\"a\":1,\"b\":\"a\"},\"b\":[\"a\",\"x\\\"a\"]}".utf8)))
    }

    func testACheckpointWithMoreLayersThanItsConfigIsRefused() throws {
        let dir = try makeTempDir(self)
        let src = Fixtures.dir("mixtral")
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        let layers = cfg["num_hidden_layers"] as! Int
        cfg["num_hidden_layers"] = layers - 1
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: dir + "/config.json"))
        try FileManager.default.createSymbolicLink(atPath: dir + "/model.safetensors", withDestinationPath: src + "/model.safetensors")
        assertMoETuneError(try Checkpoint(directory: dir), contains: ["model.safetensors", "layer \(layers - 1)", "num_hidden_layers \(layers - 1)"])
    }

    /// A copy of the train-mixtral adapter with one lora_B tensor set to NaN.
    static func nanAdapter(_ dir: String) throws -> (dir: String, tensor: String) {
        let src = Fixtures.dir("train-mixtral")
        let file = try SafeTensorsFile(path: src + "/adapter_model.safetensors")
        var w = SafeTensorsWriter()
        let victim = file.tensors.keys.sorted().first { $0.contains("q_proj.lora_B") }!
        for (name, info) in file.tensors {
            var values = try file.floatArray(name)
            if name == victim { values = values.map { _ in Float.nan } }
            w.add(.init(name: name, shape: info.shape, floats: values))
        }
        let out = dir + "/nan-adapter"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try w.write(to: out + "/adapter_model.safetensors")
        try FileManager.default.copyItem(atPath: src + "/adapter_config.json", toPath: out + "/adapter_config.json")
        return (out, victim)
    }

    func testMergeRefusesNaNWeightsNamingTheTensor() throws {
        let dir = try makeTempDir(self)
        let bad = try Self.nanAdapter(dir)
        // Refused when the adapter is loaded (the one check eval, merge and generate share).
        assertMoETuneError(try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(bad.dir, 1)], outDir: dir + "/merged"),
                           contains: ["tensor '\(bad.tensor)' holds a non-finite value", "nan-adapter"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/merged"))
    }

    func testEvalWithANaNLossExitsNonZeroAndJSONPrintsNothing() throws {
        let dir = try makeTempDir(self)
        let bad = try Self.nanAdapter(dir)
        for json in [false, true] {
            let r = try runMoETune(["eval", "--model", Fixtures.dir("mixtral"), "--adapter", bad.dir, "--data", Fixtures.dir("eval.jsonl")]
                + (json ? ["--json"] : []))
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.contains("tensor '\(bad.tensor)' holds a non-finite value"), r.err)
            XCTAssertEqual(r.out, "", "nothing on stdout")
        }
        let r = try runMoETune(["eval", "--model", Fixtures.dir("mixtral"), "--data", Fixtures.dir("eval.jsonl"), "--generate",
                             "--max-new-tokens", "\(Int.max)"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--max-new-tokens must be at most"), r.err)
    }
}
