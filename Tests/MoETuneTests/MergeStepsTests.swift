import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The steps of Merger.merge on their own (MergeJob in Sources/MoEExport/MergeJob.swift):
/// the plan, one tensor's merged values against W + s B A computed here, the shard plan and
/// config.json's text. The whole merge is MergeTests and StreamingMergeTests.
final class MergeStepsTests: XCTestCase {
    /// A float tensor of a safetensors file as [Float].
    func tensor(_ dir: String, _ file: String, _ name: String) throws -> [Float] {
        try SafeTensorsFile(path: dir + "/" + file).floatArray(name)
    }

    /// A base tensor of the checkpoint in `dir` (one file or shards) as [Float].
    func base(_ dir: String, _ name: String) throws -> [Float] {
        try SafeTensorsFile(path: try Checkpoint(directory: dir).path(of: name)).floatArray(name)
    }

    /// The plan of the tied llama with a head adapter: every checkpoint tensor in name order,
    /// merged in fp32 (4 bytes a value), then its own lm_head from the embedding (untied).
    func testPlanListsEveryTensorAndTheUntiedHead() throws {
        let job = try MergeJob(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], dtype: nil)
        let (tensors, untie) = try job.plan()
        let ck = try Checkpoint(directory: Fixtures.dir("llama"))
        XCTAssertTrue(untie)
        XCTAssertEqual(tensors.map(\.name), ck.tensorNames.sorted() + ["lm_head.weight"])
        XCTAssertEqual(tensors.count, 2 + 2 * 9 + 1)   // embedding, final norm; per layer 2 norms and 7 linears; lm_head
        guard let head = tensors.last, let q = tensors.first(where: { $0.name == "model.layers.0.self_attn.q_proj.weight" }) else {
            return XCTFail("lm_head or q_proj missing from the plan")
        }
        XCTAssertEqual(head.shape, [384, 64])
        XCTAssertEqual(head.bytes, 384 * 64 * 4)
        guard case .tiedHead = head.source else { return XCTFail("lm_head must come from the embedding, got \(head.source)") }
        XCTAssertEqual(q.shape, [64, 64])
        guard case .float = q.source else { return XCTFail("q_proj must be merged from its float values, got \(q.source)") }
        // bf16 output: the same tensors at 2 bytes a value.
        let bf16 = try MergeJob(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], dtype: .bf16).plan()
        XCTAssertEqual(bf16.tensors.map(\.bytes), tensors.map { $0.bytes / 2 })
        // Mixtral has its own lm_head: nothing is added, nothing untied.
        let mixtral = try MergeJob(modelDir: Fixtures.dir("mixtral"), adapters: [(Fixtures.dir("train-mixtral"), 1)], dtype: nil).plan()
        XCTAssertFalse(mixtral.untie)
        XCTAssertEqual(mixtral.tensors.map(\.name), try Checkpoint(directory: Fixtures.dir("mixtral")).tensorNames.sorted())
    }

    /// q_proj of layer 0 merged: W + (lora_alpha / r) B A with W, A and B read from the files
    /// and the product summed here; one module counted as merged.
    func testOneTensorIsWPlusScaledBA() throws {
        let model = Fixtures.dir("llama"), adapter = Fixtures.dir("train-llama")
        let job = try MergeJob(modelDir: model, adapters: [(adapter, 1)], dtype: nil)
        let name = "model.layers.0.self_attn.q_proj.weight", key = "base_model.model.model.layers.0.self_attn.q_proj"
        let w = try base(model, name)
        let a = try tensor(adapter, "adapter_model.safetensors", key + ".lora_A.weight")   // [4, 64]
        let b = try tensor(adapter, "adapter_model.safetensors", key + ".lora_B.weight")   // [64, 4]
        let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_config.json"))) as? [String: Any])
        let r = try XCTUnwrap(cfg["r"] as? Int), alpha = try XCTUnwrap((cfg["lora_alpha"] as? NSNumber)?.floatValue)
        XCTAssertEqual(a.count, r * 64)
        var expected = w
        for o in 0..<64 {
            for i in 0..<64 {
                var sum: Float = 0
                for j in 0..<r { sum += b[o * r + j] * a[j * 64 + i] }
                expected[o * 64 + i] += alpha / Float(r) * sum
            }
        }
        let merged = try w.withUnsafeBufferPointer { try job.mergedValues(name, shape: [64, 64], from: $0.baseAddress!) }
        XCTAssertEqual(merged.count, w.count)
        let diff = zip(merged, expected).map { abs($0 - $1) }.max()!
        let delta = zip(expected, w).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(diff, 1e-5)
        XCTAssertGreaterThan(delta, 1e-3, "the adapter changes q_proj, so the check above can fail")
        XCTAssertEqual(job.merged, 1)
        // A norm has no adapter: its values come back unchanged and nothing is counted.
        let norm = try base(model, "model.norm.weight")
        XCTAssertEqual(try norm.withUnsafeBufferPointer { try job.mergedValues("model.norm.weight", shape: [64], from: $0.baseAddress!) }, norm)
        XCTAssertEqual(job.merged, 1)
    }

    /// GPT-OSS's gate_up_proj [E, H, 2I]: expert e's gate delta s B A [I, H] lands transposed in
    /// the even columns, up in the odd ones (the deltas computed here from the job's adapters).
    func testGptOssExpertDeltasLandTransposedAndInterleaved() throws {
        let job = try MergeJob(modelDir: Fixtures.dir("gpt_oss"), adapters: [(Fixtures.dir("train-gpt_oss-experts"), 1)], dtype: nil)
        let c = job.config, f = c.family
        let (e, h, i) = (c.numExperts, c.hiddenSize, c.expertIntermediateSize)
        let name = f.fusedGateUp(0)
        let w = try base(Fixtures.dir("gpt_oss"), name)
        XCTAssertEqual(w.count, e * h * 2 * i)
        var expected = w
        for x in 0..<e {
            for (half, part) in [FeedForwardPart.gate, .up].enumerated() {
                let ad = try XCTUnwrap(job.byModule[f.module(.expert(x, part), layer: 0)], "expert \(x) \(part)")
                for o in 0..<i {
                    for col in 0..<h {
                        var sum: Float = 0
                        for j in 0..<ad.rank { sum += ad.b[o * ad.rank + j] * ad.a[j * h + col] }
                        expected[(x * h + col) * 2 * i + 2 * o + half] += ad.scale * sum
                    }
                }
            }
        }
        let merged = try w.withUnsafeBufferPointer { try job.mergedValues(name, shape: [e, h, 2 * i], from: $0.baseAddress!) }
        XCTAssertLessThanOrEqual(zip(merged, expected).map { abs($0 - $1) }.max()!, 1e-5)
        XCTAssertGreaterThan(zip(expected, w).map { abs($0 - $1) }.max()!, 1e-4)
        XCTAssertEqual(job.merged, 2 * e)
        // The wrong shape is refused naming the tensor and both shapes.
        assertMoETuneError(try w.withUnsafeBufferPointer { try job.mergedValues(name, shape: [e, 2 * i, h], from: $0.baseAddress!) },
                           contains: [name, "[\(e), \(2 * i), \(h)]", "expected [\(e), \(h), \(2 * i)]"])
    }

    /// A non-finite merged value is refused naming the tensor, the element and the adapters.
    func testNonFiniteMergedValueIsRefused() throws {
        let job = try MergeJob(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], dtype: nil)
        var w = try base(Fixtures.dir("llama"), "model.layers.1.mlp.down_proj.weight")
        w[5] = .nan
        assertMoETuneError(try w.withUnsafeBufferPointer { try job.mergedValues("model.layers.1.mlp.down_proj.weight", shape: [64, 128], from: $0.baseAddress!) },
                           contains: ["non-finite", "model.layers.1.mlp.down_proj.weight", "element 5", "train-llama"])
    }

    /// A new shard once the next tensor would pass the limit; one larger than it alone.
    func testShardPlan() {
        XCTAssertEqual(Merger.shardPlan([5, 5, 5, 20, 1], maxBytes: 10), [[0, 1], [2], [3], [4]])
        XCTAssertEqual(Merger.shardPlan([3, 3, 3], maxBytes: 100), [[0, 1, 2]])
        XCTAssertEqual(Merger.shardPlan([], maxBytes: 10), [[]])
    }

    /// config.json's text keeps every other byte (0.0 stays 0.0); only the dtype names, an
    /// untied head and (MXFP4 experts dequantized) quantization_config change.
    func testMergedConfigText() throws {
        let text = "{\n  \"torch_dtype\": \"float32\", \"dtype\": \"float32\",\n  \"tie_word_embeddings\": true,\n  \"attention_dropout\": 0.0,\n  \"quantization_config\": {\"quant_method\": \"mxfp4\"},\n  \"vocab_size\": 40\n}"
        let out = try Merger.mergedConfigText(text, dtype: .bf16, untie: true, dequantizedExperts: true, path: "config.json")
        XCTAssertEqual(out, "{\n  \"torch_dtype\": \"bfloat16\", \"dtype\": \"bfloat16\",\n  \"tie_word_embeddings\": false,\n  \"attention_dropout\": 0.0,\n  \n  \"vocab_size\": 40\n}")
        let same = try Merger.mergedConfigText(text, dtype: .f32, untie: false, dequantizedExperts: false, path: "config.json")
        XCTAssertEqual(same, text)
        XCTAssertTrue(try Merger.mergedConfigText(text, dtype: .f16, untie: false, dequantizedExperts: false, path: "c").contains("\"dtype\": \"float16\""))
    }

    /// writeShards writes the planned tensors into the files of the shard plan and maps each
    /// name to its file; every adapter module is then merged exactly once.
    func testWriteShardsWritesThePlan() throws {
        let job = try MergeJob(modelDir: Fixtures.dir("llama"), adapters: [(Fixtures.dir("train-llama"), 1)], dtype: nil)
        let (tensors, _) = try job.plan()
        let shards = Merger.shardPlan(tensors.map(\.bytes), maxBytes: 100_000)
        XCTAssertGreaterThan(shards.count, 1)
        let dir = try makeTempDir(self)
        assertMoETuneError(try job.checkEveryModuleMerged(), contains: ["internal: merged 0 modules"])
        let map = try job.writeShards(tensors, shards: shards, to: dir)
        try job.checkEveryModuleMerged()
        XCTAssertEqual(Set(map.keys), Set(tensors.map(\.name)))
        for (k, shard) in shards.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", k + 1, shards.count)
            let st = try SafeTensorsFile(path: dir + "/" + file)
            XCTAssertEqual(Set(st.tensors.keys), Set(shard.map { tensors[$0].name }), file)
        }
        // The norm is copied unchanged (fp32 in, fp32 out).
        let file = try XCTUnwrap(map["model.norm.weight"])
        XCTAssertEqual(try tensor(dir, file, "model.norm.weight"), try base(Fixtures.dir("llama"), "model.norm.weight"))
    }
}
