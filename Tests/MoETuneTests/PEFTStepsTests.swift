import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The steps of PEFTAdapter.load and .save on their own (Sources/MoECore/IO/PEFTAdapterReader.swift
/// and PEFTAdapterWriter.swift): the config step's refusals, the key-to-module mapping, the
/// fused expert split and its inverse, and the writer's keys and adapter_config.json fields.
/// Whole files against peft's are PEFTOutTests and AdapterConfigTests.
final class PEFTStepsTests: XCTestCase {
    func shapes(_ fixture: String) throws -> ModuleShapes {
        ModuleShapes(config: try ModelConfig.load(directory: Fixtures.dir(fixture)))
    }

    /// A folder holding only adapter_config.json with `json`'s text.
    func configDir(_ json: String) throws -> String {
        let dir = try makeTempDir(self)
        try Data(json.utf8).write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        return dir
    }

    /// Each bad value is refused as a config error naming its key (and the pattern's entry).
    func testReadConfigRefusesABadKeyNamingIt() throws {
        let cases: [(json: String, key: String, fragment: String)] = [
            (#"{"r": 4, "lora_alpha": "sixteen"}"#, "lora_alpha", "sixteen"),
            (#"{"r": 4, "lora_alpha": true}"#, "lora_alpha", "not a number"),
            (#"{"r": 4}"#, "lora_alpha", "nothing"),
            (#"{"r": 0, "lora_alpha": 8}"#, "r", "positive integer"),
            (#"{"peft_type": "IA3", "r": 4, "lora_alpha": 8}"#, "peft_type", "IA3"),
            (#"{"r": 4, "lora_alpha": 8, "use_dora": true}"#, "use_dora", "DoRA"),
            (#"{"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 2.5}}"#, "rank_pattern", "q_proj"),
            (#"{"r": 4, "lora_alpha": 8, "alpha_pattern": {"k_proj": "x"}}"#, "alpha_pattern", "k_proj"),
            (#"{"r": 4, "lora_alpha": 8, "alpha_pattern": {"(": 4}}"#, "alpha_pattern", "not a valid regular expression"),
            (#"{"r": 4, "lora_alpha": 8, "rank_pattern": [1]}"#, "rank_pattern", "not an object"),
        ]
        for c in cases {
            let dir = try configDir(c.json)
            do {
                _ = try PEFTAdapter.readConfig(directory: dir)
                XCTFail("\(c.json) was accepted")
            } catch MoETuneError.config(let path, let key, let message) {
                XCTAssertEqual(path, dir + "/adapter_config.json", c.json)
                XCTAssertEqual(key, c.key, c.json)
                XCTAssertTrue(message.contains(c.fragment), "\(c.json): \(message)")
            } catch {
                XCTFail("\(c.json): expected a config error, got \(error)")
            }
        }
    }

    /// A good config: r, lora_alpha, use_rslora and the patterns, matched by suffix.
    func testReadConfigReadsRAlphaAndPatterns() throws {
        let dir = try configDir(#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true, "alpha_pattern": {"q_proj": 16}, "rank_pattern": {"experts\\.0\\.w1": 2}}"#)
        let cfg = try PEFTAdapter.readConfig(directory: dir)
        XCTAssertEqual(cfg.r, 4)
        XCTAssertEqual(cfg.alpha, 8)
        XCTAssertTrue(cfg.rslora)
        XCTAssertEqual(cfg.alphaPattern.map(\.key), ["q_proj"])
        XCTAssertEqual(PEFTAdapter.match(cfg.alphaPattern, ["model.layers.1.self_attn.q_proj"]), 16)
        XCTAssertNil(PEFTAdapter.match(cfg.alphaPattern, ["model.layers.1.self_attn.k_proj"]))
        XCTAssertEqual(PEFTAdapter.match(cfg.rankPattern, ["model.layers.0.block_sparse_moe.experts.0.w1"]), 2)
        XCTAssertNil(PEFTAdapter.match(cfg.rankPattern, ["model.layers.0.block_sparse_moe.experts.10.w1"]))
        // rsLoRA: alpha / sqrt(rank); q_proj takes its pattern's alpha.
        XCTAssertEqual(PEFTAdapter.scale("model.layers.0.self_attn.q_proj", rank: 4, patternName: nil, config: cfg, family: .llama), 8)
        XCTAssertEqual(PEFTAdapter.scale("model.layers.0.self_attn.v_proj", rank: 4, patternName: nil, config: cfg, family: .llama), 4)
    }

    /// A PEFT key names its module without "base_model.model." and ".lora_A.weight"; a key
    /// without the prefix is refused naming it; peft's fused expert modules map to their layer.
    func testLoRAKeyMapsToItsModule() throws {
        XCTAssertEqual(try PEFTAdapter.module(ofLoRAKey: "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight", path: "f"),
                       "model.layers.3.self_attn.q_proj")
        XCTAssertEqual(try PEFTAdapter.module(ofLoRAKey: "base_model.model.lm_head.lora_A.weight", path: "f"), "lm_head")
        assertMoETuneError(try PEFTAdapter.module(ofLoRAKey: "model.layers.3.self_attn.q_proj.lora_A.weight", path: "a.safetensors"),
                           contains: ["a.safetensors", "model.layers.3.self_attn.q_proj.lora_A.weight", "does not start with base_model.model."])
        let f = ModelFamily.mixtral
        XCTAssertEqual(f.fusedExpertAdapter("model.layers.1.mlp.experts.base_layer").map { [$0.layer, $0.gateUp ? 1 : 0] }, [1, 1])
        XCTAssertEqual(f.fusedExpertAdapter("model.layers.1.mlp.experts").map { [$0.layer, $0.gateUp ? 1 : 0] }, [1, 0])
        XCTAssertNil(f.fusedExpertAdapter("model.layers.1.self_attn.q_proj"))
        XCTAssertEqual(f.canonicalModule("model.layers.1.mlp.gate"), "model.layers.1.block_sparse_moe.gate")
    }

    /// peft's fused gate_up adapter of Mixtral layer 0 (A [E*2r, H], B [2I, 2r*E], block-diagonal)
    /// becomes per-expert gate (w1) and up (w3) adapters of rank r, scaled at rank 2r; down_proj's
    /// per-expert w2 adapters of rank r. Values picked out of the file here.
    func testFusedExpertPiecesSplitPerExpert() throws {
        let dir = Fixtures.dir("peft-out-mixtral")
        let file = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        let c = try ModelConfig.load(directory: Fixtures.dir("mixtral"))
        let (e, h, i) = (c.numExperts, c.hiddenSize, c.expertIntermediateSize)
        let key = "base_model.model.model.layers.0.mlp.experts.base_layer"
        let a = try file.floatArray(key + ".lora_A.weight"), b = try file.floatArray(key + ".lora_B.weight")
        let r2 = file.shape(key + ".lora_A.weight")[0] / e, r = r2 / 2
        let pieces = try PEFTAdapter.fusedExpertPieces("model.layers.0.mlp.experts.base_layer", layer: 0, gateUp: true, file: file, config: c)
        XCTAssertEqual(pieces.map(\.module), (0..<e).flatMap { x in
            ["model.layers.0.block_sparse_moe.experts.\(x).w1", "model.layers.0.block_sparse_moe.experts.\(x).w3"] })
        for (k, p) in pieces.enumerated() {
            let (x, half) = (k / 2, k % 2)
            XCTAssertEqual(p.rank, r, p.module)
            XCTAssertEqual(p.scaleRank, r2, p.module)
            XCTAssertEqual(p.patternName, "model.layers.0.mlp.experts.gate_up_proj")
            XCTAssertEqual(p.a, Array(a[((x * r2 + half * r) * h)..<((x * r2 + half * r + r) * h)]), p.module)
            XCTAssertEqual(p.b, (0..<i).flatMap { o in (0..<r).map { j in b[(half * i + o) * r2 * e + (half * r + j) * e + x] } }, p.module)
        }
        let down = try PEFTAdapter.fusedExpertPieces("model.layers.0.mlp.experts", layer: 0, gateUp: false, file: file, config: c)
        XCTAssertEqual(down.map(\.module), (0..<e).map { "model.layers.0.block_sparse_moe.experts.\($0).w2" })
        XCTAssertEqual(down.map(\.rank), Array(repeating: file.shape("base_model.model.model.layers.0.mlp.experts.lora_A.weight")[0] / e, count: e))
        XCTAssertEqual(down.map(\.scaleRank), Array(repeating: nil, count: e))
        // A fused adapter whose rows do not divide among the experts is refused naming the module.
        var three = c
        three.numExperts = 3
        assertMoETuneError(try PEFTAdapter.fusedExpertPieces("model.layers.0.mlp.experts", layer: 0, gateUp: false, file: file, config: three),
                           contains: ["module model.layers.0.mlp.experts", "does not match 3 experts"])
    }

    /// gate_up B [2I, rank]: block-diagonal splits into two adapters of half the rank (scaled at
    /// the full rank); otherwise gate and up share A at the full rank; GPT-OSS interleaves rows.
    func testSplitGateUp() {
        let a: [Float] = [1, 2, 3, 4, 5, 6]   // [2, 3]
        let blocks: [Float] = [7, 0, 8, 0, 0, 9, 0, 10]   // gate rows 0, 1 use column 0; up rows 2, 3 column 1
        let s = PEFTAdapter.splitGateUp(a: a, b: blocks, rank: 2, inFeatures: 3, inter: 2, family: .mixtral)
        XCTAssertEqual(s.gate.a, [1, 2, 3]); XCTAssertEqual(s.gate.b, [7, 8])
        XCTAssertEqual(s.up.a, [4, 5, 6]); XCTAssertEqual(s.up.b, [9, 10])
        XCTAssertEqual([s.gate.rank, s.up.rank], [1, 1]); XCTAssertEqual([s.gate.scaleRank, s.up.scaleRank], [2, 2])
        let shared = PEFTAdapter.splitGateUp(a: a, b: [7, 1, 8, 0, 0, 9, 0, 10], rank: 2, inFeatures: 3, inter: 2, family: .mixtral)
        XCTAssertEqual(shared.gate.a, a); XCTAssertEqual(shared.gate.b, [7, 1, 8, 0]); XCTAssertEqual(shared.up.b, [0, 9, 0, 10])
        XCTAssertEqual([shared.gate.rank, shared.up.rank], [2, 2]); XCTAssertEqual([shared.gate.scaleRank, shared.up.scaleRank], [nil, nil])
        // GPT-OSS: gate row o is 2o, up row o is 2o + 1.
        let gpt = PEFTAdapter.splitGateUp(a: a, b: [7, 0, 0, 9, 8, 0, 0, 10], rank: 2, inFeatures: 3, inter: 2, family: .gptOss)
        XCTAssertEqual(gpt.gate.b, [7, 8]); XCTAssertEqual(gpt.up.b, [9, 10])
    }

    /// The writer's layout of a llama adapter: exactly the lora keys peft wrote (not its
    /// lm_head.base_layer copy), the same values, and adapter_config.json's fields.
    func testSavedLayoutAndConfigOfADenseAdapter() throws {
        let dir = Fixtures.dir("train-llama")
        let set = try PEFTAdapter.load(directory: dir, shapes: try shapes("llama"))
        let layout = try PEFTAdapter.savedLayout(set, family: .llama)
        let peft = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        XCTAssertEqual(Set(layout.tensors.map(\.name)), Set(peft.tensors.keys.filter { $0.contains(".lora_") }))
        XCTAssertEqual(layout.tensors.count, 2 * (2 * 7 + 1))
        for t in layout.tensors {
            let ours = t.data.withUnsafeBytes { raw in (0..<(raw.count / 4)).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) } }
            XCTAssertEqual(ours, try peft.floatArray(t.name), t.name)
            XCTAssertEqual(t.shape, peft.shape(t.name), t.name)
        }
        XCTAssertTrue(layout.parameters.isEmpty)
        XCTAssertTrue(layout.fullRouters.isEmpty)
        let cfg = PEFTAdapter.savedConfig(set, layout: layout, family: .llama, baseModel: "base/llama")
        XCTAssertEqual(cfg["target_modules"] as? [String], ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"])
        XCTAssertEqual(cfg["r"] as? Int, 4)
        XCTAssertEqual(cfg["lora_alpha"] as? Double, 8)
        XCTAssertEqual(cfg["base_model_name_or_path"] as? String, "base/llama")
        XCTAssertEqual(cfg["peft_type"] as? String, "LORA")
        XCTAssertEqual(cfg["use_rslora"] as? Bool, false)
        XCTAssertEqual((cfg["rank_pattern"] as? [String: Int])?.count, 0)
        XCTAssertTrue(cfg["modules_to_save"] is NSNull)
        XCTAssertTrue(cfg["layers_to_transform"] is NSNull)
        XCTAssertNil(cfg["target_parameters"])
    }

    /// Mixtral's per-expert adapters written as peft's fused blocks: fusedExpertLoRA gives
    /// peft's own gate_up and down tensors of the layer exactly, and splitting them again gives
    /// each expert's adapters back; the config names both as target_parameters.
    func testFusedExpertLoRAIsPeftsBlocks() throws {
        let dir = Fixtures.dir("peft-out-mixtral")
        let set = try PEFTAdapter.load(directory: dir + "/legacy", shapes: try shapes("mixtral"))
        let peft = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        let fused = try PEFTAdapter.fusedExpertLoRA(set.layers[0].experts, layer: 0, family: .mixtral)
        let gu = "base_model.model.model.layers.0.mlp.experts.base_layer", dn = "base_model.model.model.layers.0.mlp.experts"
        XCTAssertEqual(fused.gateUp.a, try peft.floatArray(gu + ".lora_A.weight"))
        XCTAssertEqual(fused.gateUp.b, try peft.floatArray(gu + ".lora_B.weight"))
        XCTAssertEqual([fused.gateUp.rank, fused.gateUp.inFeatures], peft.shape(gu + ".lora_A.weight"))
        XCTAssertEqual([fused.gateUp.outFeatures, fused.gateUp.rank], peft.shape(gu + ".lora_B.weight"))
        XCTAssertEqual(fused.down.a, try peft.floatArray(dn + ".lora_A.weight"))
        XCTAssertEqual(fused.down.b, try peft.floatArray(dn + ".lora_B.weight"))
        // Expert 1's slice split again is its gate and up adapter.
        let e = set.layers[0].experts.count, g = try XCTUnwrap(set.layers[0].experts[1].gate), u = try XCTUnwrap(set.layers[0].experts[1].up)
        let r2 = 2 * g.rank, h = g.inFeatures, inter = g.outFeatures
        let ax = Array(fused.gateUp.a[(r2 * h)..<(2 * r2 * h)])
        let bx = (0..<(2 * inter)).flatMap { o in (0..<r2).map { j in fused.gateUp.b[o * r2 * e + j * e + 1] } }
        let split = PEFTAdapter.splitGateUp(a: ax, b: bx, rank: r2, inFeatures: h, inter: inter, family: .mixtral)
        XCTAssertEqual(split.gate.a, Array(UnsafeBufferPointer(start: g.a, count: g.rank * h)))
        XCTAssertEqual(split.gate.b, Array(UnsafeBufferPointer(start: g.b, count: g.rank * inter)))
        XCTAssertEqual(split.up.b, Array(UnsafeBufferPointer(start: u.b, count: u.rank * inter)))
        let layout = try PEFTAdapter.savedLayout(set, family: .mixtral)
        let cfg = PEFTAdapter.savedConfig(set, layout: layout, family: .mixtral, baseModel: "m")
        let targets = try XCTUnwrap(cfg["target_parameters"] as? [String])
        XCTAssertTrue(targets.contains("mlp.experts.gate_up_proj") && targets.contains("mlp.experts.down_proj"), "\(targets)")
        XCTAssertEqual((cfg["rank_pattern"] as? [String: Int])?[NSRegularExpression.escapedPattern(for: "mlp.experts.gate_up_proj")], r2)
    }
}
