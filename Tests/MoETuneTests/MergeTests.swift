import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Merged checkpoints against peft (base + adapter unmerged) and a weighted two-adapter
/// merge computed in torch; logits within 1e-4 (fp32).
final class MergeTests: XCTestCase {
    func logits(_ dir: String, fixture name: String) throws -> (ours: [Float], mask: [Int32], v: Int, ref: SafeTensorsFile) {
        let model = try Transformer.load(directory: dir)
        let ref = try SafeTensorsFile(path: Fixtures.dir("train-" + name) + "/batch.safetensors")
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), mask = try ref.intArray("attention_mask")
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let batch = TokenBatch(batch: b, seq: t, ids: ids, targets: Array(repeating: -1, count: b * t), lengths: lengths)
        let state = ForwardState(config: model.config, batch: b, seq: t, training: false)
        _ = try model.forward(batch, state: state)
        return (state.logits.array.prefix(b * t * model.config.vocabSize).map { $0 }, mask, model.config.vocabSize, ref)
    }

    func maxDiff(_ a: [Float], _ b: [Float], mask: [Int32], v: Int) -> Float {
        var worst: Float = 0
        for (pos, m) in mask.enumerated() where m == 1 {
            for j in 0..<v { worst = max(worst, abs(a[pos * v + j] - b[pos * v + j])) }
        }
        return worst
    }

    func testMergedMixtralMatchesPeftUnmerged() throws {
        let out = try makeTempDir(self) + "/merged"
        let s = try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(Fixtures.dir("train-mixtral"), 1)], outDir: out)
        XCTAssertEqual(s.dtype, .f32)
        let r = try logits(out, fixture: "mixtral")
        let diff = maxDiff(r.ours, try r.ref.floatArray("logits"), mask: r.mask, v: r.v)
        print("merged mixtral (\(s.mergedModules) modules) vs peft unmerged: max |diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 1e-4)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.model"))
    }

    func testWeightedMergeOfTwoAdaptersMatchesTorch() throws {
        let out = try makeTempDir(self) + "/merged"
        _ = try Merger.merge(modelDir: Fixtures.dir("mixtral"),
                             adapters: [(Fixtures.dir("train-mixtral"), 0.7), (Fixtures.dir("train-mixtral") + "/adapter2", 0.3)],
                             outDir: out)
        let r = try logits(out, fixture: "mixtral")
        let diff = maxDiff(r.ours, try r.ref.floatArray("logits_mix"), mask: r.mask, v: r.v)
        print("0.7 / 0.3 merge vs torch: max |diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 1e-4)
        // Evaluating with both adapters (mixed at run time) gives the same logits as the merge.
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let mixed = try AdapterSet.mix([(try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model), 0.7),
                                        (try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral") + "/adapter2", model: model), 0.3)],
                                       model: model)
        let shape = r.ref.shape("input_ids")
        let ids = try r.ref.intArray("input_ids")
        let lengths = (0..<shape[0]).map { i in (0..<shape[1]).filter { r.mask[i * shape[1] + $0] == 1 }.count }
        let state = ForwardState(config: model.config, batch: shape[0], seq: shape[1], training: false, loraRank: mixed.maxRank)
        _ = try model.forward(TokenBatch(batch: shape[0], seq: shape[1], ids: ids, targets: Array(repeating: -1, count: ids.count), lengths: lengths),
                              state: state, adapters: mixed)
        XCTAssertLessThanOrEqual(maxDiff(Array(state.logits.array.prefix(r.ours.count)), r.ours, mask: r.mask, v: r.v), 1e-4)
    }

    func testTiedLlamaWithHeadAdapterShardedAndBF16() throws {
        let out = try makeTempDir(self) + "/merged"
        var o = Merger.Options()
        o.maxShardBytes = 100_000
        let s = try Merger.merge(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], outDir: out, options: o)
        XCTAssertGreaterThan(s.files, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/model.safetensors.index.json"))
        let cfg = try ModelConfig.load(directory: out)
        XCTAssertFalse(cfg.tieWordEmbeddings, "a merged head adapter unties lm_head from the embedding")
        let r = try logits(out, fixture: "llama")
        let diff = maxDiff(r.ours, try r.ref.floatArray("logits"), mask: r.mask, v: r.v)
        print("merged llama (tied, head adapter, \(s.files) shards) vs peft: max |diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 1e-4)
        // BF16 output loads and stays close (BF16 keeps 8 mantissa bits).
        var b = Merger.Options()
        b.dtype = .bf16
        let out2 = try makeTempDir(self) + "/bf16"
        _ = try Merger.merge(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], outDir: out2, options: b)
        let ck = try Checkpoint(directory: out2)
        XCTAssertEqual(ck.info(ModelFamily.mixtral.embedTokens)?.dtype, .bf16)
        XCTAssertLessThan(maxDiff(try logits(out2, fixture: "llama").ours, r.ours, mask: r.mask, v: r.v), 0.1)
    }

    func testRefusals() throws {
        let dir = try makeTempDir(self)
        let out = dir + "/merged"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: out + "/notes.txt"))
        assertMoETuneError(try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(Fixtures.dir("train-mixtral"), 1)], outDir: out),
                           contains: [out, "not empty"])
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/notes.txt"), "nothing the user had is touched")
        // An adapter for another base: the first mismatching module is named.
        assertMoETuneError(try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(Fixtures.dir("train-llama"), 1)], outDir: dir + "/x"),
                           contains: ["adapter_model.safetensors", "module", "mlp"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"), "no half-written output")
    }
}
