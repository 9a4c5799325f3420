import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The real GPT-OSS configuration and checkpoint layout (scripts/make_gptoss_real_fixture.py):
/// - gpt_oss-20b-config/config.json: openai/gpt-oss-20b's config.json as published (the
///   script names its source), parsed field for field;
/// - gpt_oss-real: a tiny transformers 5.23 GptOss with the same field set (yarn factor 32,
///   beta 32/1, original 4096, truncate false, theta 150000; layer_types; sinks; biases; bf16
///   tensors and MXFP4 experts), and gpt_oss-real-truncate, its twin with truncate true:
///   logits within 1e-4 and loss within 1e-5 relative of transformers for each;
/// - train-gpt_oss-real: a peft adapter (q, k, v, o, fused experts) and the logits of peft's
///   merge_and_unload on the dequantized model, against moe-tune's merge into the MXFP4 base.
extension FamilyTests {
    func realConfig(_ edit: (inout [String: Any]) -> Void = { _ in }) throws -> ModelConfig {
        let path = Fixtures.dir("gpt_oss-20b-config") + "/config.json"
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&json)
        return try ModelConfig.parse(try JSONSerialization.data(withJSONObject: json), path: path)
    }

    func testRealGptOss20bConfigParsesFieldForField() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("gpt_oss-20b-config") + "/config.json"))
        let c = try ModelConfig.parse(data, path: "gpt-oss-20b/config.json")
        XCTAssertEqual(c.family, .gptOss)
        XCTAssertEqual([c.hiddenSize, c.intermediateSize, c.expertIntermediateSize, c.numLayers, c.numHeads, c.numKVHeads, c.headDim],
                       [2880, 2880, 2880, 24, 64, 8, 64])
        XCTAssertEqual([c.vocabSize, c.numExperts, c.expertsPerToken, c.maxPositionEmbeddings], [201088, 32, 4, 131072])
        XCTAssertEqual(c.eosTokenIds, [200002])
        XCTAssertNil(c.bosTokenId)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertEqual(c.ropeTheta, 150000)
        XCTAssertEqual(c.ropeScaling, .yarn(factor: 32, originalMaxPositions: 4096, betaFast: 32, betaSlow: 1,
                                           attentionFactor: 0.1 * Foundation.log(32.0) + 1, truncate: false))
        XCTAssertEqual(c.slidingWindow, 128)
        XCTAssertEqual(c.slidingLayers, Set(stride(from: 0, to: 24, by: 2)))
        XCTAssertEqual(c.window(layer: 0), 128)
        XCTAssertNil(c.window(layer: 1))
        XCTAssertTrue(c.qkvBias && c.oBias && c.routerBias && c.attentionSinks && c.normTopKProb)
        XCTAssertEqual(c.clampedSwiGLU, ClampedSwiGLU(alpha: 1.702, limit: 7))
        // router_aux_loss_coef 0.9 applies only with output_router_logits (false here), as in transformers.
        XCTAssertEqual(c.routerAuxLossCoef, 0)
        XCTAssertEqual(try realConfig { $0["output_router_logits"] = true }.routerAuxLossCoef, 0.9)
        // quantization_config: every layer's experts MXFP4; attention, router, embeddings, head exempt.
        let q = try XCTUnwrap(c.mxfp4)
        XCTAssertEqual(q.modulesToNotConvert, ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"])
        for l in 0..<24 { XCTAssertNil(q.exemptingPattern(for: c.family.fusedExperts(l))) }
        XCTAssertEqual(q.exemptingPattern(for: "model.layers.17.self_attn"), "model.layers.*.self_attn")
        XCTAssertEqual(q.exemptingPattern(for: "model.layers.3.mlp.router"), "model.layers.*.mlp.router")
        XCTAssertEqual(q.exemptingPattern(for: "lm_head"), "lm_head")
        // transformers' boundary rule: "layers.1" exempts layer 1, not layer 11; a suffix matches too.
        let p = MXFP4Quantization(modulesToNotConvert: ["model.layers.1", "experts"])
        XCTAssertEqual(p.exemptingPattern(for: "model.layers.1.mlp.experts"), "model.layers.1")
        XCTAssertEqual(MXFP4Quantization(modulesToNotConvert: ["model.layers.1"]).exemptingPattern(for: "model.layers.11.mlp.experts"), nil)
        XCTAssertEqual(MXFP4Quantization(modulesToNotConvert: ["mlp.experts"]).exemptingPattern(for: "model.layers.11.mlp.experts"), "mlp.experts")
    }

    /// No field of the real file is ignored: each one that would change the computation is read,
    /// the legacy ones are checked against their replacements, and anything else is refused.
    func testGptOssConfigFieldsAreReadOrRefused() throws {
        let path = "config.json"
        assertMoETuneError(try realConfig { $0["sliding_window_pattern"] = 2 }, contains: [path, "sliding_window_pattern", "does not implement"])
        assertMoETuneError(try realConfig { $0["attention_dropout"] = 0.1 }, contains: ["attention_dropout", "not supported"])
        assertMoETuneError(try realConfig { $0["experts_per_token"] = 3 }, contains: ["experts_per_token", "num_experts_per_tok 4"])
        assertMoETuneError(try realConfig { $0["initial_context_length"] = 8192 }, contains: ["initial_context_length", "4096"])
        assertMoETuneError(try realConfig {
            var r = $0["rope_scaling"] as! [String: Any]; r["low_freq_factor"] = 1; $0["rope_scaling"] = r
        }, contains: ["rope_scaling.low_freq_factor"])
        assertMoETuneError(try realConfig {
            var q = $0["quantization_config"] as! [String: Any]; q["group_size"] = 32; $0["quantization_config"] = q
        }, contains: ["quantization_config.group_size"])
        assertMoETuneError(try realConfig {
            var q = $0["quantization_config"] as! [String: Any]; q["modules_to_not_convert"] = ["model.layers.(.experts"]; $0["quantization_config"] = q
        }, contains: ["modules_to_not_convert", "model.layers.(.experts", "not a valid pattern"])
        // truncate true is the other branch; without any RoPE field, transformers' GptOssConfig default (yarn, truncate false).
        let t = try realConfig { var r = $0["rope_scaling"] as! [String: Any]; r["truncate"] = true; $0["rope_scaling"] = r }
        guard case let .yarn(_, _, _, _, _, truncate)? = t.ropeScaling else { return XCTFail("yarn") }
        XCTAssertTrue(truncate)
        let d = try realConfig { $0["rope_scaling"] = nil; $0["initial_context_length"] = nil }
        XCTAssertEqual(d.ropeScaling, try realConfig().ropeScaling)
    }

    /// The tiny model with the real field set and its truncate-true twin against transformers:
    /// logits 1e-4, loss 1e-5 relative; the two references differ (> 1e-3), so reading truncate
    /// wrongly fails one of them.
    func testGptOssRealFieldSetMatchesTransformers() throws {
        var refs: [[Float]] = []
        for name in ["gpt_oss-real", "gpt_oss-real-truncate"] {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            guard case let .yarn(32, 4096, 32, 1, _, truncate)? = model.config.ropeScaling else { return XCTFail("\(name): yarn") }
            XCTAssertEqual(truncate, name.hasSuffix("truncate"), name)
            let ref = try Fixtures.reference(name)
            let (tb, mask) = try batch(ref)
            let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false)
            let (sum, count) = try model.forward(tb, state: state)
            let loss = sum / Double(count), refLoss = Double(try ref.floatArray("loss")[0])
            let diff = maxDiff(state.logits.pointer, try ref.floatArray("logits"), mask: mask, v: model.config.vocabSize)
            print("\(name): logits max |diff| \(diff), loss \(loss) vs \(refLoss)")
            XCTAssertLessThanOrEqual(diff, 1e-4, name)
            XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, name)
            refs.append(try ref.floatArray("logits"))
        }
        XCTAssertGreaterThan(zip(refs[0], refs[1]).map { abs($0 - $1) }.max()!, 1e-3)
    }

    /// A copy of gpt_oss-real with its config.json edited and, optionally, layer 1's experts
    /// stored plain (F32, the exact dequantized values) instead of MXFP4.
    func gptOssRealCopy(plainLayer1: Bool, notConvert: [String]?, quantization: Bool = true) throws -> String {
        let src = Fixtures.dir("gpt_oss-real"), dir = try makeTempDir(self) + "/m"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        if quantization {
            json["quantization_config"] = ["quant_method": "mxfp4", "modules_to_not_convert": notConvert as Any]
        } else {
            json["quantization_config"] = nil
        }
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/config.json"))
        let file = try SafeTensorsFile(path: src + "/model.safetensors")
        var w = SafeTensorsWriter()
        for name in file.tensors.keys.sorted() {
            let info = file.tensors[name]!
            if plainLayer1, name.hasPrefix("model.layers.1.mlp.experts."), name.hasSuffix("_blocks") {
                let base = String(name.dropLast("_blocks".count))
                let (values, shape) = try MXFP4.dequantize(base, in: file)
                w.entries.append(.init(name: base, shape: shape, floats: values))
            } else if plainLayer1, name.hasPrefix("model.layers.1.mlp.experts."), name.hasSuffix("_scales") {
                continue
            } else {
                w.entries.append(.init(name: name, dtype: info.dtype, shape: info.shape, data: Data(file.bytes(of: info))))
            }
        }
        try w.write(to: dir + "/model.safetensors")
        return dir
    }

    /// modules_to_not_convert decides which experts are MXFP4: the exempt ones load stored
    /// plain (logits of the reference 1e-4), and storage that contradicts the config is refused
    /// naming the tensor.
    func testGptOssModulesToNotConvertHonoured() throws {
        let real = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
        let plain = try gptOssRealCopy(plainLayer1: true, notConvert: real + ["model.layers.1.mlp.experts"])
        let model = try Transformer.load(directory: plain)
        let ref = try Fixtures.reference("gpt_oss-real")
        let (tb, mask) = try batch(ref)
        let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false)
        _ = try model.forward(tb, state: state)
        XCTAssertLessThanOrEqual(maxDiff(state.logits.pointer, try ref.floatArray("logits"), mask: mask, v: model.config.vocabSize), 1e-4)

        assertMoETuneError(try Transformer.load(directory: gptOssRealCopy(plainLayer1: true, notConvert: real)),
                           contains: ["model.layers.1.mlp.experts.gate_up_proj", "not MXFP4", "modules_to_not_convert"])
        assertMoETuneError(try Transformer.load(directory: gptOssRealCopy(plainLayer1: false, notConvert: real + ["layers.1.mlp.experts"])),
                           contains: ["model.layers.1.mlp.experts.gate_up_proj_blocks", "modules_to_not_convert", "'layers.1.mlp.experts'"])
        assertMoETuneError(try Transformer.load(directory: gptOssRealCopy(plainLayer1: false, notConvert: nil, quantization: false)),
                           contains: ["model.layers.0.mlp.experts.gate_up_proj_blocks", "quantization_config"])
    }

    func gptOssRealMergedLogits(_ dir: String, key: String = "logits") throws -> (Float, TensorInfo?) {
        let model = try Transformer.load(directory: dir)
        let ref = try SafeTensorsFile(path: Fixtures.dir("train-gpt_oss-real") + "/merged.safetensors")
        let (tb, mask) = try batch(ref)
        let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false)
        _ = try model.forward(tb, state: state)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        return (maxDiff(state.logits.pointer, try ref.floatArray(key), mask: mask, v: model.config.vocabSize),
                file.tensors["model.layers.0.mlp.experts.gate_up_proj"])
    }

    /// Merging expert adapters into MXFP4 experts writes them dequantized, as peft's
    /// merge_and_unload + save_pretrained does on transformers' CPU load: in the base's dtype
    /// (bf16 here, as the released checkpoints) or --dtype, no _blocks/_scales, no
    /// quantization_config. f32: peft's merged logits within 1e-4 and its merged layer-0
    /// gate_up_proj within 1e-6; bf16: peft's merge with every weight rounded to bf16 within
    /// 1e-3 (a weight whose fp32 sum lands on the other side of a bf16 rounding boundary moves
    /// by one bf16 step; fp32 vs bf16 storage differ by ~0.1 here). (scripts/check_merge.py
    /// loads the folder in transformers; README.)
    func testGptOssMergeIntoMXFP4WritesDequantizedExperts() throws {
        let tmp = try makeTempDir(self)
        let base = Fixtures.dir("gpt_oss-real"), adapter = Fixtures.dir("train-gpt_oss-real")
        var o = Merger.Options()
        o.dtype = .f32
        let s = try Merger.merge(modelDir: base, adapters: [(adapter, 1)], outDir: tmp + "/f32", options: o)
        XCTAssertTrue(s.dequantizedMXFP4)
        let (diff, info) = try gptOssRealMergedLogits(tmp + "/f32")
        print("gpt_oss-real merged (f32) vs peft merge_and_unload: logits max |diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 1e-4)
        XCTAssertEqual(info?.shape, [4, 64, 64])
        let file = try SafeTensorsFile(path: tmp + "/f32/model.safetensors")
        XCTAssertFalse(file.tensors.keys.contains { $0.hasSuffix("_blocks") || $0.hasSuffix("_scales") })
        let mine = try file.floatArray("model.layers.0.mlp.experts.gate_up_proj")
        let peft = try SafeTensorsFile(path: adapter + "/merged.safetensors").floatArray("layer0_gate_up_proj")
        XCTAssertLessThanOrEqual(zip(mine, peft).map { abs($0 - $1) }.max()!, 1e-6)
        let cfg = try String(contentsOfFile: tmp + "/f32/config.json", encoding: .utf8)
        XCTAssertFalse(cfg.contains("quantization_config"))
        XCTAssertNil(try ModelConfig.load(directory: tmp + "/f32").mxfp4)

        let b = try Merger.merge(modelDir: base, adapters: [(adapter, 1)], outDir: tmp + "/bf16")
        XCTAssertEqual(b.dtype, .bf16)
        let (bdiff, binfo) = try gptOssRealMergedLogits(tmp + "/bf16", key: "logits_bf16")
        print("gpt_oss-real merged (bf16) vs peft merge_and_unload: logits max |diff| \(bdiff)")
        XCTAssertEqual(binfo?.dtype, .bf16)
        XCTAssertLessThanOrEqual(bdiff, 1e-3)

        // The command line says so on stderr.
        let r = try runMoETune(["merge", "--model", base, "--adapter", adapter, "--out", tmp + "/cli"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("MXFP4 experts are written dequantized (BF16)") && r.err.contains("quantization_config is dropped"), r.err)
    }

    /// Without expert adapters the MXFP4 blocks and quantization_config are kept as they are.
    func testGptOssMergeWithoutExpertAdaptersKeepsMXFP4() throws {
        let dir = Fixtures.dir("gpt_oss-real")
        let model = try Transformer.load(directory: dir)
        let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: 2, alpha: 4, targets: [.query, .value]), seed: 1)
        let tmp = try makeTempDir(self)
        try PEFTAdapter.save(adapters, family: model.family, baseModel: dir, to: tmp + "/adapter")
        let s = try Merger.merge(modelDir: dir, adapters: [(tmp + "/adapter", 1)], outDir: tmp + "/merged")
        XCTAssertFalse(s.dequantizedMXFP4)
        let file = try SafeTensorsFile(path: tmp + "/merged/model.safetensors")
        let src = try SafeTensorsFile(path: dir + "/model.safetensors")
        let key = "model.layers.0.mlp.experts.gate_up_proj_blocks"
        XCTAssertEqual(Data(file.bytes(of: file.tensors[key]!)), Data(src.bytes(of: src.tensors[key]!)))
        XCTAssertNotNil(try ModelConfig.load(directory: tmp + "/merged").mxfp4)
    }
}
