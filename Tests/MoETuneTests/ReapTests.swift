import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoEExport

/// Expert pruning (`moe-tune prune`, REAP): saliencies against an independent computation
/// (scripts/make_reap_fixtures.py: float64 routing and expert outputs from the checkpoint's
/// weights on transformers' hidden states, each example alone), the kept sets, and the
/// pruned models' logits against transformers on the same experts sliced in torch.
final class ReapTests: XCTestCase {
    static let families = ["mixtral", "qwen3_moe", "qwen2_moe", "olmoe"]

    func fixture(_ family: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("reap/\(family).json")))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    func dataset(_ loaded: LoadedModel) throws -> Dataset {
        try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                         vocabSize: loaded.model.config.vocabSize, options: DataOptions())
    }

    /// reap and frequency saliencies of every expert within 1e-5 of the independent
    /// computation, batched with padding (4 a batch) and one example at a time; the kept sets
    /// at keep 0.25, 0.5 and 0.75 exactly.
    func testSaliencyMatchesIndependentComputation() throws {
        for family in Self.families {
            let fx = try fixture(family)
            let loaded = try LoadedModel.load(directory: Fixtures.dir(family))
            let ds = try dataset(loaded)
            let refLayers = fx["layers"] as! [[String: Any]]
            let experts = fx["experts"] as! Int
            for batch in [4, 1] {
                for method in [PruneMethod.reap, .frequency] {
                    var worst = 0.0
                    for keep in ["0.25", "0.5", "0.75"] {
                        let n = try PrunePlan.keepCount(Double(keep)!, experts: experts)
                        let plan = try PrunePlan.compute(model: loaded.model, dataset: ds, batchSize: batch, method: method, keep: n, seed: 0)
                        XCTAssertEqual(plan.tokens, fx["tokens"] as? Int, family)
                        XCTAssertEqual(plan.layers.map(\.layer), refLayers.map { $0["layer"] as! Int }, family)
                        for (mine, ref) in zip(plan.layers, refLayers) {
                            let s = (ref[method.rawValue] as! [NSNumber]).map(\.doubleValue)
                            for (a, b) in zip(mine.saliency, s) { worst = max(worst, abs(a - b)) }
                            let kept = ((ref["kept"] as! [String: Any])[method.rawValue] as! [String: [Int]])[keep]!
                            XCTAssertEqual(mine.kept, kept, "\(family) layer \(mine.layer) \(method) keep \(keep) batch \(batch)")
                        }
                    }
                    XCTAssertLessThan(worst, 1e-5, "\(family) \(method) batch \(batch)")
                    print("REAP \(family) \(method.rawValue) batch \(batch): largest saliency difference \(worst)")
                }
            }
        }
    }

    /// Logits of `model` on the fixture's sequence against transformers' on the pruned model.
    func logitsDiff(_ model: Transformer, family: String) throws -> Float {
        let ref = try SafeTensorsFile(path: Fixtures.dir("reap/\(family)-pruned.safetensors"))
        let ids = try ref.intArray("input_ids")
        let t = ids.count
        let batch = TokenBatch(sequences: [ids], counted: [Array(repeating: true, count: t)])
        let state = ForwardState(config: model.config, batch: 1, seq: t, training: false)
        try model.forward(batch, state: state)
        let want = try ref.floatArray("logits")
        XCTAssertEqual(want.count, t * model.config.vocabSize)
        var worst: Float = 0
        for i in want.indices { worst = max(worst, abs(state.logits[i] - want[i])) }
        return worst
    }

    /// `prune` (reap, keep 0.5) writes a folder whose logits equal transformers' on the same
    /// experts sliced in torch (1e-4), with the expert count in config.json and top-k kept.
    func testPrunedFolderMatchesTransformers() throws {
        let dir = try makeTempDir(self)
        for family in Self.families {
            let loaded = try LoadedModel.load(directory: Fixtures.dir(family))
            let c = loaded.model.config
            let plan = try PrunePlan.compute(model: loaded.model, dataset: try dataset(loaded), batchSize: 4, method: .reap,
                                             keep: c.numExperts / 2, seed: 0)
            let s = try ExpertPruner.pruneFolder(model: Fixtures.dir(family), kept: plan.kept, topK: nil, outDir: dir + "/" + family, overwrite: false)
            XCTAssertEqual(s.experts, c.numExperts / 2)
            let pruned = try Transformer.load(directory: dir + "/" + family)
            XCTAssertEqual(pruned.config.numExperts, c.numExperts / 2)
            XCTAssertEqual(pruned.config.expertsPerToken, c.expertsPerToken)
            let diff = try logitsDiff(pruned, family: family)
            print("REAP \(family) pruned folder: logits max |diff| to transformers \(diff)")
            XCTAssertLessThanOrEqual(diff, 1e-4, family)
        }
    }

    /// A GGUF pruned by moe-tune (its stacked experts and router sliced, expert_count
    /// rewritten) gives transformers' logits of the pruned model (1e-4).
    func testPrunedGGUFMatchesTransformers() throws {
        let dir = try makeTempDir(self)
        for family in ["mixtral", "qwen3_moe"] {
            let path = Fixtures.dir("gguf/arch/\(family).gguf")
            let loaded = try LoadedModel.load(directory: path)
            let c = loaded.model.config
            let plan = try PrunePlan.compute(model: loaded.model, dataset: try dataset(loaded), batchSize: 4, method: .reap,
                                             keep: c.numExperts / 2, seed: 0)
            let ref = try fixture(family)["layers"] as! [[String: Any]]
            XCTAssertEqual(plan.layers.map(\.kept), ref.map { ((($0["kept"] as! [String: Any])["reap"]) as! [String: [Int]])["0.5"]! })
            let out = dir + "/\(family).gguf"
            _ = try ExpertPruner.pruneGGUF(model: path, kept: plan.kept, topK: nil, out: out, overwrite: false, type: .f32)
            let g = try GGUFFile(path: out)
            XCTAssertEqual(try g.int(c.family.ggufExpertCountKey), c.numExperts / 2)
            XCTAssertEqual(try g.string(GGUFFile.writerKey), "prune")
            let diff = try logitsDiff(try Transformer.load(directory: out), family: family)
            print("REAP \(family) pruned GGUF: logits max |diff| to transformers \(diff)")
            XCTAssertLessThanOrEqual(diff, 1e-4, family)
        }
    }

    /// --top-k rewrites num_experts_per_tok; a top-k above the kept experts, a dense model,
    /// an uneven plan and an existing output are refused.
    func testTopKAndRefusals() throws {
        let dir = try makeTempDir(self)
        let model = Fixtures.dir("qwen3_moe")
        let kept = [0: [0, 2, 4, 6], 1: [1, 3, 5, 7]]
        _ = try ExpertPruner.pruneFolder(model: model, kept: kept, topK: 2, outDir: dir + "/k2", overwrite: false)
        let c = try Transformer.load(directory: dir + "/k2").config
        XCTAssertEqual(c.numExperts, 4)
        XCTAssertEqual(c.expertsPerToken, 2)
        assertMoETuneError(try ExpertPruner.pruneFolder(model: model, kept: [0: [0, 1], 1: [2, 3]], topK: nil, outDir: dir + "/a", overwrite: false),
                           contains: ["top-k 3", "2 experts"])
        assertMoETuneError(try ExpertPruner.pruneFolder(model: model, kept: [0: [0, 1, 2], 1: [2, 3, 4, 5]], topK: nil, outDir: dir + "/b", overwrite: false),
                           contains: ["layer"])
        assertMoETuneError(try ExpertPruner.pruneFolder(model: Fixtures.dir("llama"), kept: [:], topK: nil, outDir: dir + "/c", overwrite: false),
                           contains: ["dense"])
        assertMoETuneError(try ExpertPruner.pruneFolder(model: model, kept: kept, topK: 2, outDir: dir + "/k2", overwrite: false),
                           contains: ["k2"])
        _ = try ExpertPruner.pruneFolder(model: model, kept: kept, topK: nil, outDir: dir + "/k2", overwrite: true)
        XCTAssertEqual(try Transformer.load(directory: dir + "/k2").config.expertsPerToken, 3)
    }

    /// --keep as a fraction (REAP's count of the dropped: floor(E x (1 - keep))) or a count;
    /// the highest saliencies kept, ties to the lower id; random draws depend on the seed only.
    func testKeepCountTiesAndRandom() throws {
        XCTAssertEqual(try PrunePlan.keepCount(0.5, experts: 8), 4)
        XCTAssertEqual(try PrunePlan.keepCount(0.75, experts: 4), 3)
        XCTAssertEqual(try PrunePlan.keepCount(0.6, experts: 4), 3)
        XCTAssertEqual(try PrunePlan.keepCount(3, experts: 4), 3)
        assertMoETuneError(try PrunePlan.keepCount(5, experts: 4), contains: ["--keep"])
        assertMoETuneError(try PrunePlan.keepCount(2.5, experts: 4), contains: ["--keep"])
        assertMoETuneError(try PrunePlan.keepCount(0, experts: 4), contains: ["--keep"])
        XCTAssertEqual(try PrunePlan.keepCount(0.1, experts: 4), 1)
        XCTAssertEqual(PrunePlan.keepHighest([0.5, 0.2, 0.5, 0.9], count: 2), [0, 3])
        XCTAssertEqual(PrunePlan.keepHighest([0.1, 0.1, 0.1, 0.1], count: 3), [0, 1, 2])
        XCTAssertEqual(PrunePlan.keepHighest([0, 0.3, 0, 0], count: 2), [0, 1])
        let a = PrunePlan.randomSaliency(seed: 1, layer: 0, experts: 8)
        XCTAssertEqual(a, PrunePlan.randomSaliency(seed: 1, layer: 0, experts: 8))
        XCTAssertNotEqual(a, PrunePlan.randomSaliency(seed: 2, layer: 0, experts: 8))
        XCTAssertNotEqual(a, PrunePlan.randomSaliency(seed: 1, layer: 1, experts: 8))
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let plan = try PrunePlan.compute(model: model, dataset: nil, batchSize: 4, method: .random, keep: 3, seed: 7)
        XCTAssertEqual(plan.layers.map(\.kept.count), [3, 3])
        assertMoETuneError(try PrunePlan.compute(model: model, dataset: nil, batchSize: 4, method: .reap, keep: 3, seed: 0),
                           contains: ["--data"])
    }
}

/// `prune --adapter`: the pruned adapter merged into the pruned model equals the original
/// adapter merged and then pruned, tensor for tensor (experts renumbered, router LoRA rows).
final class ReapAdapterTests: XCTestCase {
    func testPrunedAdapterMergesLikePrunedMerge() throws {
        let dir = try makeTempDir(self)
        let model = Fixtures.dir("qwen3_moe"), adapter = Fixtures.dir("peft-out-qwen3_moe")
        let kept = [0: [1, 2, 5, 7], 1: [0, 3, 4, 6]]
        _ = try ExpertPruner.pruneFolder(model: model, kept: kept, topK: nil, outDir: dir + "/pruned", overwrite: false)
        let modules = try ExpertPruner.pruneAdapter(adapter: adapter, model: model, kept: kept, topK: nil,
                                                    outDir: dir + "/pruned-adapter", baseModel: dir + "/pruned")
        let original = try PEFTAdapter.load(directory: adapter, shapes: ModuleShapes(config: try Checkpoint(directory: model).config))
        XCTAssertEqual(modules, original.all.count - 2 * 4 * 3, "the dropped experts' gate/up/down adapters")
        _ = try Merger.merge(modelDir: dir + "/pruned", adapters: [(dir + "/pruned-adapter", 1)], outDir: dir + "/a")
        _ = try Merger.merge(modelDir: model, adapters: [(adapter, 1)], outDir: dir + "/merged")
        _ = try ExpertPruner.pruneFolder(model: dir + "/merged", kept: kept, topK: nil, outDir: dir + "/b", overwrite: false)
        let a = try SafeTensorsFile(path: dir + "/a/model.safetensors"), b = try SafeTensorsFile(path: dir + "/b/model.safetensors")
        XCTAssertEqual(Set(a.tensors.keys), Set(b.tensors.keys))
        for (name, info) in a.tensors {
            XCTAssertEqual(try a.floatArray(name), try b.floatArray(name), name)
            XCTAssertEqual(info.shape, b.tensors[name]?.shape, name)
        }
        assertMoETuneError(try ExpertPruner.pruneAdapter(adapter: adapter, model: model, kept: kept, topK: nil,
                                                         outDir: dir + "/pruned-adapter", baseModel: dir + "/pruned"),
                           contains: ["pruned-adapter"])
    }
}

/// `moe-tune prune` on the built binary: --json's object, the table, a GGUF output, the
/// pruned adapter, and one-line refusals before any output.
final class ReapCLITests: XCTestCase {
    func testPruneCommand() throws {
        let dir = try makeTempDir(self), data = Fixtures.dir("eval.jsonl")
        let r = try runMoETune(["prune", "--model", Fixtures.dir("olmoe"), "--data", data, "--keep", "0.5", "--json", "--out", dir + "/o"])
        XCTAssertEqual(r.status, 0, r.err)
        let obj = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        XCTAssertEqual(Set(obj.keys), ["method", "seed", "experts", "keep", "top_k", "tokens", "layers", "out"])
        XCTAssertEqual(obj["keep"] as? Int, 4)
        XCTAssertEqual(obj["top_k"] as? Int, 2)
        let ref = (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("reap/olmoe.json")))) as! [String: Any])["layers"] as! [[String: Any]]
        XCTAssertEqual((obj["layers"] as! [[String: Any]]).map { $0["kept"] as! [Int] },
                       ref.map { (($0["kept"] as! [String: Any])["reap"] as! [String: [Int]])["0.5"]! })
        XCTAssertEqual(try Transformer.load(directory: dir + "/o").config.numExperts, 4)
        let g = try runMoETune(["prune", "--model", Fixtures.dir("gguf/arch/qwen3_moe.gguf"), "--data", data, "--keep", "6",
                                "--top-k", "2", "--out", dir + "/q.gguf"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(g.out.contains("reap saliency per expert, 655 tokens; keeping 6 of 8 per layer"), g.out)
        let c = try Transformer.load(directory: dir + "/q.gguf").config
        XCTAssertEqual([c.numExperts, c.expertsPerToken], [6, 2])
        let a = try runMoETune(["prune", "--model", Fixtures.dir("qwen3_moe"), "--adapter", Fixtures.dir("peft-out-qwen3_moe"),
                                "--adapter-out", dir + "/ad", "--method", "random", "--seed", "3", "--keep", "0.5", "--out", dir + "/qa"])
        XCTAssertEqual(a.status, 0, a.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/ad/adapter_config.json"))
        for bad in [["--model", Fixtures.dir("llama"), "--keep", "0.5"], ["--model", Fixtures.dir("gpt_oss"), "--keep", "0.5"],
                    ["--model", Fixtures.dir("mixtral"), "--keep", "0.25"], ["--model", Fixtures.dir("mixtral"), "--keep", "0.5", "--method", "x"],
                    ["--model", Fixtures.dir("mixtral"), "--keep", "3", "--top-k", "4"], ["--model", Fixtures.dir("mixtral"), "--keep", "9"]] {
            let e = try runMoETune(["prune", "--data", data, "--out", dir + "/bad"] + bad)
            XCTAssertEqual(e.status, 1, e.err)
            XCTAssertEqual(e.err.split(separator: "\n").filter { $0.hasPrefix("moe-tune") }.count, 1, e.err)
            XCTAssertTrue(e.out.isEmpty)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad"))
        }
    }
}
