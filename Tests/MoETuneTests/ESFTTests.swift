import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Expert-specialised fine-tuning (ESFT): expert scores against an independent count
/// (scripts/make_esft_fixtures.py: numpy routing from the router weights on transformers'
/// hidden states, each example alone), the selection rule, `lora.experts` in training and
/// the adapters it writes.
final class ESFTTests: XCTestCase {
    static let families = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v2", "gpt_oss"]

    func fixture(_ family: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("esft/\(family).json")))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// gate_score and token_share of every expert of every routed layer within 1e-6 of the
    /// independent count, batched with padding (4 a batch) and one example at a time; the
    /// selected sets at coverages 0.2, 0.5, 0.8 and 1.0 exactly.
    func testScoresAndSelectionMatchIndependentCount() throws {
        for family in Self.families {
            let fx = try fixture(family)
            let loaded = try LoadedModel.load(directory: Fixtures.dir(family))
            let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                                      vocabSize: loaded.model.config.vocabSize, options: DataOptions())
            let refLayers = fx["layers"] as! [[String: Any]]
            for batch in [4, 1] {
                var worst = 0.0
                for kind in ExpertScoreKind.allCases {
                    for coverage in ["0.2", "0.5", "0.8", "1.0"] {
                        let sel = try ExpertSelection.compute(model: loaded.model, dataset: ds, batchSize: batch,
                                                              select: kind, coverage: Double(coverage)!)
                        XCTAssertEqual(sel.tokens, fx["tokens"] as? Int, family)
                        XCTAssertEqual(sel.layers.map(\.layer), refLayers.map { $0["layer"] as! Int }, family)
                        for (mine, ref) in zip(sel.layers, refLayers) {
                            let scores = (ref[kind.rawValue] as! [NSNumber]).map(\.doubleValue)
                            XCTAssertEqual(mine.scores.count, scores.count)
                            for (a, b) in zip(mine.scores, scores) { worst = max(worst, abs(a - b)) }
                            let expected = ((ref["selected"] as! [String: Any])[kind.rawValue] as! [String: [Int]])[coverage]!
                            XCTAssertEqual(mine.selected, expected, "\(family) layer \(mine.layer) \(kind.rawValue) coverage \(coverage) batch \(batch)")
                        }
                    }
                }
                XCTAssertLessThan(worst, 1e-6, "\(family) batch \(batch)")
                print("ESFT \(family) batch \(batch): largest score difference \(worst)")
            }
        }
    }

    /// Descending score, ties to the lower id, taken while the running sum is below
    /// coverage x total; an all-zero layer selects nothing.
    func testSelectionRule() {
        let s = [0.25, 0.25, 0.5, 0.0]
        XCTAssertEqual(ExpertSelection.select(scores: s, coverage: 0.5), [2])
        XCTAssertEqual(ExpertSelection.select(scores: s, coverage: 0.6), [0, 2])
        XCTAssertEqual(ExpertSelection.select(scores: s, coverage: 0.75), [0, 2])
        XCTAssertEqual(ExpertSelection.select(scores: s, coverage: 0.76), [0, 1, 2])
        XCTAssertEqual(ExpertSelection.select(scores: s, coverage: 1.0), [0, 1, 2])
        XCTAssertEqual(ExpertSelection.select(scores: [0.1, 0.1, 0.1, 0.1], coverage: 0.2), [0])
        XCTAssertEqual(ExpertSelection.select(scores: [0.1, 0.1, 0.1, 0.1], coverage: 0.3), [0, 1])
        XCTAssertEqual(ExpertSelection.select(scores: [0, 0], coverage: 0.5), [])
        assertMoETuneError(try ExpertSelection.checkCoverage(0), contains: ["coverage", "(0, 1]"])
        assertMoETuneError(try ExpertSelection.checkCoverage(1.5), contains: ["coverage"])
        assertMoETuneError(try ExpertSelection.checkCoverage(.nan), contains: ["coverage"])
    }

    /// Trains a few steps on a fixture with `overrides`; returns out_dir.
    func train(_ family: String, _ overrides: [String], dir: String, model: String? = nil) throws -> String {
        let cfgPath = Fixtures.root + "/../../../configs/demo.yaml"
        let out = dir + "/" + family + "-" + String(overrides.count)
        let cfg = try TrainConfig.load(path: cfgPath, overrides: [
            "model=\(model ?? Fixtures.dir(family))", "training.max_steps=3", "training.out_dir=\(out)",
            "data.train=\(Fixtures.dir("eval.jsonl"))", "data.valid=null", "data.test=null",
            "training.eval_every=0", "optimizer.lr=0.02", "schedule.warmup_steps=0", "training.batch_size=4",
        ] + overrides)
        _ = try Trainer(config: cfg, configPath: cfgPath).run()
        return out
    }

    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// `select: all` trains exactly as no lora.experts key: the same adapter bytes, the same
    /// resolved config.yaml, and no experts.json.
    func testSelectAllIsBitIdentical() throws {
        let dir = try makeTempDir(self)
        let plain = try train("mixtral", [], dir: dir)
        let all = try train("mixtral", ["lora.experts.select=all", "lora.experts.coverage=0.3"], dir: dir)
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            XCTAssertEqual(try bytes(plain + "/" + file), try bytes(all + "/" + file), file)
        }
        // config.yaml differs only in out_dir.
        let yaml = { (d: String) in try String(contentsOfFile: d + "/config.yaml", encoding: .utf8).replacingOccurrences(of: d, with: "OUT") }
        XCTAssertEqual(try yaml(plain), try yaml(all))
        XCTAssertFalse(FileManager.default.fileExists(atPath: all + "/experts.json"))
    }

    /// With gate_score at coverage 0.5: experts.json is the selection `experts` computes on
    /// the training tokens; the adapter read back holds LoRA on exactly the selected experts'
    /// gate, up and down (attention on every layer as configured); in the fused file the
    /// other experts' A rows and B columns are zero and the selected ones' are not.
    func testSubsetAdapterHoldsExactlyTheSelectedExperts() throws {
        let dir = try makeTempDir(self)
        for family in ["mixtral", "qwen2_moe"] {
            let out = try train(family, ["lora.experts.select=gate_score", "lora.experts.coverage=0.5"], dir: dir)
            let sel = try ExpertSelection.read(json: try bytes(out + "/experts.json"), path: out)
            let loaded = try LoadedModel.load(directory: Fixtures.dir(family))
            let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                                      vocabSize: loaded.model.config.vocabSize, options: DataOptions(maxSeqLen: 64))
            let fresh = try ExpertSelection.compute(model: loaded.model, dataset: ds, batchSize: 4, select: .gateScore, coverage: 0.5)
            XCTAssertEqual(sel.layers.map(\.selected), fresh.layers.map(\.selected), family)
            for (a, b) in zip(sel.layers.flatMap(\.scores), fresh.layers.flatMap(\.scores)) { XCTAssertEqual(a, b, accuracy: 1e-12) }
            XCTAssertLessThan(sel.layers.reduce(0) { $0 + $1.selected.count }, sel.layers.count * loaded.model.config.numExperts)

            let set = try PEFTAdapter.load(directory: out, model: loaded.model)
            let f = loaded.model.family
            var adapted: [Int: Set<Int>] = [:]
            var attention = 0
            for a in set.all {
                guard let (l, slot) = f.parse(module: a.module) else { continue }
                if case .expert(let e, _) = slot { adapted[l, default: []].insert(e) }
                if [.q, .k, .v, .o].contains(where: { $0 == slot }) { attention += 1 }
            }
            for l in sel.layers { XCTAssertEqual(adapted[l.layer] ?? [], Set(l.selected), "\(family) layer \(l.layer)") }
            XCTAssertEqual(Set(adapted.keys), Set(sel.layers.filter { !$0.selected.isEmpty }.map(\.layer)))
            XCTAssertEqual(attention, 4 * loaded.model.config.numLayers, family)
            XCTAssertEqual(set.all.filter { if case .expert = f.parse(module: $0.module)?.slot { return true }; return false }.count,
                           3 * sel.layers.reduce(0) { $0 + $1.selected.count }, family)
            try checkFusedBlocks(out, family: f, experts: loaded.model.config.numExperts, selection: sel)
        }
    }

    /// In each fused down_proj adapter, A (E, r, I) and B (H, r, E): expert x's rows of A and
    /// columns of B are zero exactly when x is not selected.
    func checkFusedBlocks(_ out: String, family f: ModelFamily, experts e: Int, selection sel: ExpertSelection) throws {
        let file = try SafeTensorsFile(path: out + "/adapter_model.safetensors")
        for l in sel.layers {
            let module = PEFTAdapter.prefix + f.fusedExpertAdapterModules(l.layer).down
            let a = try file.floatArray(module + ".lora_A.weight"), b = try file.floatArray(module + ".lora_B.weight")
            let shapeA = file.shape(module + ".lora_A.weight"), shapeB = file.shape(module + ".lora_B.weight")
            let r = shapeA[0] / e, inF = shapeA[1], outF = shapeB[0]
            for x in 0..<e {
                let ax = a[(x * r * inF)..<((x + 1) * r * inF)]
                let bx = (0..<outF).flatMap { o in (0..<r).map { j in b[o * r * e + j * e + x] } }
                let zero = ax.allSatisfy { $0 == 0 } && bx.allSatisfy { $0 == 0 }
                XCTAssertEqual(zero, !l.selected.contains(x), "layer \(l.layer) expert \(x)")
            }
        }
    }

    /// A selected-experts adapter merges: into a Hugging Face folder (Mixtral fixture) and into
    /// an f32 GGUF (Qwen3-MoE GGUF fixture), each merged model's loss equals eval with the
    /// adapter (1e-5 relative); the merge counts only the adapted modules.
    func testSubsetAdapterMerges() throws {
        let dir = try makeTempDir(self)
        let esft = ["lora.experts.select=gate_score", "lora.experts.coverage=0.5"]
        func evalLoss(_ model: String, adapter: String? = nil) throws -> Double {
            let loaded = try LoadedModel.load(directory: model)
            let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                                      vocabSize: loaded.model.config.vocabSize, options: DataOptions())
            let set = try adapter.map { try PEFTAdapter.load(directory: $0, model: loaded.model) }
            return try Evaluator.evaluate(model: loaded.model, adapters: set, dataset: ds, batchSize: 3).loss
        }
        let hf = try train("mixtral", esft, dir: dir)
        let sel = try ExpertSelection.read(json: try bytes(hf + "/experts.json"), path: hf)
        let chosen = sel.layers.reduce(0) { $0 + $1.selected.count }
        let s = try Merger.merge(modelDir: Fixtures.dir("mixtral"), adapters: [(hf, 1)], outDir: dir + "/merged")
        XCTAssertEqual(s.mergedModules, 4 * 2 + 3 * chosen)
        let withAdapter = try evalLoss(Fixtures.dir("mixtral"), adapter: hf)
        XCTAssertEqual(try evalLoss(dir + "/merged"), withAdapter, accuracy: 1e-5 * withAdapter)
        XCTAssertGreaterThan(abs(withAdapter - (try evalLoss(Fixtures.dir("mixtral")))), 1e-3)

        let base = Fixtures.dir("gguf/arch") + "/qwen3_moe.gguf"
        let gg = try train("qwen3_moe", esft, dir: dir, model: base)
        let gsel = try ExpertSelection.read(json: try bytes(gg + "/experts.json"), path: gg)
        let m = try GGUFExport.mergedModel(model: base, adapters: [(gg, 1)], out: dir + "/m.gguf", type: .f32, overwrite: false)
        let layers = try LoadedModel.load(directory: base).model.config.numLayers
        XCTAssertEqual(m.mergedModules, 4 * layers + 3 * gsel.layers.reduce(0) { $0 + $1.selected.count })
        let ggAdapter = try evalLoss(base, adapter: gg)
        XCTAssertEqual(try evalLoss(dir + "/m.gguf"), ggAdapter, accuracy: 1e-5 * ggAdapter)
    }

    /// The table: one column per expert up to 16 (selected marked *), above that one summary
    /// line per layer; experts.json round-trips; report.html shows the selection.
    func testTableJSONAndReport() throws {
        let small = ExpertSelection(select: .gateScore, coverage: 0.5, tokens: 10,
                                    layers: [ExpertLayerSelection(layer: 0, scores: [0.1, 0.6, 0.3, 0], selected: [1])])
        XCTAssertTrue(small.table().contains("0.6000*"), small.table())
        let scores = (0..<20).map { Double($0 % 7) / 60 }
        let big = ExpertSelection(select: .tokenShare, coverage: 0.3, tokens: 99, layers: [
            ExpertLayerSelection(layer: 3, scores: scores, selected: ExpertSelection.select(scores: scores, coverage: 0.3))])
        let lines = big.table().split(separator: "\n")
        XCTAssertEqual(lines.count, 4, big.table())
        XCTAssertTrue(lines[2].contains("of 20") && lines[2].contains("6 0.1000, 13 0.1000"), String(lines[2]))
        // JSONSerialization writes 16 significant digits: the scores come back within an ulp or two.
        let back = try ExpertSelection.read(json: try big.jsonData(), path: "x")
        XCTAssertEqual(back.layers.map(\.selected), big.layers.map(\.selected))
        XCTAssertEqual([back.select.rawValue, "\(back.coverage)", "\(back.tokens)"], [big.select.rawValue, "\(big.coverage)", "\(big.tokens)"])
        for (a, b) in zip(back.layers[0].scores, big.layers[0].scores) { XCTAssertEqual(a, b, accuracy: 1e-15) }
        let dir = try makeTempDir(self)
        try big.jsonData().write(to: URL(fileURLWithPath: dir + "/experts.json"))
        let html = try XCTUnwrap(RunReport.expertSelectionSection(outDir: dir))
        XCTAssertTrue(html.contains("layer 3 expert 6: 0.1000 (selected)"), html)
        XCTAssertNil(RunReport.expertSelectionSection(outDir: dir + "/none"))
    }

    /// With lora.experts, a run stopped after step 3 and resumed (the scoring pass runs again)
    /// ends with the uninterrupted run's adapter and experts.json, bit for bit (ResumeTests'
    /// setup: dropout, grad_accum 2, jitter and router noise on).
    func testStopAndResumeWithSelectedExperts() throws {
        let r = ResumeTests(name: "helper", testClosure: { _ in })
        let esft = ["lora.experts.select=token_share", "lora.experts.coverage=0.5"]
        let a = try makeTempDir(self), b = try makeTempDir(self)
        try r.train(try r.setUp(a), overrides: esft)
        let cb = try r.setUp(b)
        XCTAssertEqual(try r.train(cb, overrides: esft, stopAfter: 3).stoppedAt, 3)
        XCTAssertEqual(try r.train(cb, overrides: esft, resume: true).resumedFrom, 3)
        XCTAssertEqual(try r.adapterBytes(a), try r.adapterBytes(b))
        XCTAssertEqual(try bytes(a + "/out/experts.json"), try bytes(b + "/out/experts.json"))
        assertMoETuneError(try r.train(cb, overrides: ["lora.experts.select=gate_score"], resume: true), contains: ["lora.experts"])
    }

    /// One-line config errors: a selection without mlp targets, a coverage outside (0, 1], an
    /// unknown select, a dense model.
    func testConfigErrors() throws {
        let cfgPath = Fixtures.root + "/../../../configs/demo.yaml"
        func load(_ o: [String]) throws -> TrainConfig { try TrainConfig.load(path: cfgPath, overrides: o) }
        assertMoETuneError(try load(["lora.experts.select=gate_score", "lora.targets=[query]"]), contains: ["lora.experts.select", "mlp"])
        assertMoETuneError(try load(["lora.experts.coverage=0"]), contains: ["lora.experts.coverage", "(0, 1]"])
        assertMoETuneError(try load(["lora.experts.coverage=1.2"]), contains: ["lora.experts.coverage"])
        assertMoETuneError(try load(["lora.experts.select=gate"]), contains: ["lora.experts.select", "gate_score"])
        assertMoETuneError(try load(["lora.experts.bogus=1"]), contains: ["lora.experts.bogus"])
        let resolved = try load(["lora.experts.select=token_share", "lora.experts.coverage=0.4"])
        XCTAssertEqual(resolved.lora.experts.select, .tokenShare)
        XCTAssertTrue(resolved.resolvedYAML().contains("experts: {select: token_share, coverage: 0.4}"))
        XCTAssertEqual(try TrainConfig.parse(resolved.resolvedYAML(), path: "r.yaml").lora.experts, resolved.lora.experts)
        let dir = try makeTempDir(self)
        assertMoETuneError(try train("llama", ["lora.experts.select=gate_score"], dir: dir), contains: ["lora.experts.select", "have none"])
    }

    /// `moe-tune experts --json` prints one object with the issue's keys; errors are one line
    /// with exit status 1.
    func testExpertsCommand() throws {
        let data = Fixtures.dir("eval.jsonl")
        let r = try runMoETune(["experts", "--model", Fixtures.dir("olmoe"), "--data", data, "--select", "token_share", "--coverage", "0.5", "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let obj = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        XCTAssertEqual(Set(obj.keys), ["select", "coverage", "tokens", "layers"])
        XCTAssertEqual(obj["select"] as? String, "token_share")
        let fx = try fixture("olmoe")
        XCTAssertEqual(obj["tokens"] as? Int, fx["tokens"] as? Int)
        let layers = obj["layers"] as! [[String: Any]], ref = fx["layers"] as! [[String: Any]]
        for (a, b) in zip(layers, ref) {
            XCTAssertEqual(a["selected"] as? [Int], ((b["selected"] as! [String: Any])["token_share"] as! [String: [Int]])["0.5"])
            XCTAssertEqual((a["scores"] as! [NSNumber]).count, 8)
        }
        let table = try runMoETune(["experts", "--model", Fixtures.dir("mixtral"), "--data", data])
        XCTAssertEqual(table.status, 0, table.err)
        XCTAssertTrue(table.out.contains("gate_score per expert, coverage 0.2"), table.out)
        for bad in [["--model", Fixtures.dir("llama")], ["--model", Fixtures.dir("mixtral"), "--coverage", "0"],
                    ["--model", Fixtures.dir("mixtral"), "--select", "random"]] {
            let e = try runMoETune(["experts", "--data", data] + bad)
            XCTAssertEqual(e.status, 1, e.err)
            let lines = e.err.split(separator: "\n").filter { $0.hasPrefix("moe-tune") }
            XCTAssertEqual(lines.count, 1, e.err)
            XCTAssertTrue(e.out.isEmpty)
        }
    }
}
