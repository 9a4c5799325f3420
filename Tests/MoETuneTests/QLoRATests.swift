import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// 4-bit (NF4) models against bitsandbytes + transformers 5 + peft on the Llama fixture.
final class QLoRATests: XCTestCase {
    func loss(_ model: Transformer) throws -> Double {
        let ref = try Fixtures.reference("llama")
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), mask = try ref.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        for i in 0..<b { for j in 0..<(t - 1) where mask[i * t + j + 1] == 1 { targets[i * t + j] = ids[i * t + j + 1] } }
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let r = try model.forward(TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths),
                                  state: ForwardState(config: model.config, batch: b, seq: t, training: false))
        return r.sum / Double(r.count)
    }

    func refJSON() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("nf4") + "/reference.json"))) as! [String: Any]
    }

    func testQuantizedLossMatchesBitsandbytes() throws {
        let ref = (try refJSON()["loss_4bit"] as! NSNumber).doubleValue
        let quantized = try Transformer.load(directory: Fixtures.dir("llama"), quantize: QuantizationSpec(doubleQuant: true))
        XCTAssertTrue(quantized.isQuantized)
        XCTAssertNil(quantized.embed.nf4, "embeddings stay full precision")
        let ours = try loss(quantized)
        // The checkpoint transformers saved for its 4-bit model loads as it is.
        let prequantized = try Transformer.load(directory: Fixtures.dir("nf4") + "/llama-4bit")
        XCTAssertTrue(prequantized.isQuantized)
        let theirs = try loss(prequantized)
        let full = try loss(try Transformer.load(directory: Fixtures.dir("llama")))
        print("4-bit llama loss: quantized by moe-tune \(ours), bnb checkpoint \(theirs), bitsandbytes \(ref) (fp32 \(full))")
        XCTAssertLessThanOrEqual(abs(ours - ref) / ref, 1e-4)
        XCTAssertLessThanOrEqual(abs(theirs - ref) / ref, 1e-4)
        XCTAssertGreaterThan(abs(full - ref), 1e-4, "quantization must change the loss measurably")
    }

    func testLoRAGradientsOnFourBitBaseMatchPeft() throws {
        // The 4-bit weights peft trained on, as transformers saved them.
        let model = try Transformer.load(directory: Fixtures.dir("nf4") + "/llama-4bit")
        let dir = Fixtures.dir("nf4") + "/lora"
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        let batchFile = try SafeTensorsFile(path: dir + "/batch.safetensors")
        let shape = batchFile.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try batchFile.intArray("input_ids"), labels = try batchFile.intArray("labels"), mask = try batchFile.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        for i in 0..<b { for j in 0..<(t - 1) where labels[i * t + j + 1] != -100 { targets[i * t + j] = labels[i * t + j + 1] } }
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let state = ForwardState(config: model.config, batch: b, seq: t, training: true, loraRank: adapters.maxRank)
        let (sum, count) = try model.forward(TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths),
                                             state: state, adapters: adapters)
        let refLoss = Double(try batchFile.floatArray("loss")[0])
        XCTAssertLessThanOrEqual(abs(sum / Double(count) - refLoss) / refLoss, 1e-4)
        adapters.store.zeroGrads()
        model.backward(state: state, adapters: adapters, grads: BackwardState(for: state, config: model.config), lossScale: 1 / Float(count))
        let g = try SafeTensorsFile(path: dir + "/grads.safetensors")
        var worst = 0.0
        for a in adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let expected = try g.floatArray("base_model.model.\(a.module).\(suffix).weight")
                let scale = expected.map { abs($0) }.max()!
                var diff: Float = 0
                for i in 0..<n { diff = Swift.max(diff, abs(ptr[i] - expected[i])) }
                worst = Swift.max(worst, Double(diff / scale))
                XCTAssertLessThanOrEqual(Double(diff / scale), 1e-3, "\(a.module).\(suffix)")
            }
        }
        print("QLoRA: loss \(sum / Double(count)) vs peft \(refLoss); worst LoRA gradient error \(worst) over \(adapters.all.count) adapters")
    }
}

extension QLoRATests {
    /// moe-tune's quantization of every linear weight against the checkpoint bitsandbytes
    /// wrote for the same fp32 weights: the 4-bit codes are identical. The 8-bit double
    /// quantization of the block scales picks the nearest dynamic-map code; bitsandbytes'
    /// CPU quantizer uses an approximate binary search (BinSearch "Direct2") that now and
    /// then returns the neighbouring code for a value next to a midpoint. That is allowed
    /// for at most one scale per weight; every other scale must agree within 1e-6.
    func testEveryWeightQuantizesAsBitsandbytes() throws {
        let ours = try Transformer.load(directory: Fixtures.dir("llama"), quantize: QuantizationSpec(doubleQuant: true))
        let theirs = try Transformer.load(directory: Fixtures.dir("nf4") + "/llama-4bit")
        var flipped = 0, weights = 0
        var worstOther: Float = 0
        for (a, b) in zip(ours.layers, theirs.layers) {
            for (x, y) in [(a.q, b.q), (a.k, b.k), (a.v, b.v), (a.o, b.o), (a.mlp!.gate, b.mlp!.gate), (a.mlp!.up, b.mlp!.up), (a.mlp!.down, b.mlp!.down)] {
                let p = x.nf4!, q = y.nf4!
                weights += 1
                let bytes = (p.count + 1) / 2
                XCTAssertEqual(Array(UnsafeBufferPointer(start: p.packed, count: bytes)), Array(UnsafeBufferPointer(start: q.packed, count: bytes)))
                XCTAssertEqual(p.offset, q.offset, accuracy: 1e-7, "the mean of the block scales")
                for (u, v) in zip(p.nestedAbsmax, q.nestedAbsmax) { XCTAssertEqual(u, v, accuracy: 1e-7) }
                var flips = 0
                for blk in 0..<p.blocks {
                    if p.absmaxCodes![blk] != q.absmaxCodes![blk] {
                        flips += 1
                        XCTAssertEqual(abs(Int(p.absmaxCodes![blk]) - Int(q.absmaxCodes![blk])), 1)
                    } else {
                        worstOther = max(worstOther, abs(p.blockScale(blk) - q.blockScale(blk)))
                    }
                }
                XCTAssertLessThanOrEqual(flips, 1)
                flipped += flips
            }
        }
        print("\(weights) weights: 4-bit codes identical to bitsandbytes; \(flipped) block scales one map step apart; all others within \(worstOther)")
        XCTAssertLessThanOrEqual(worstOther, 1e-6)
    }
}

extension QLoRATests {
    /// `moe-tune quantize` writes transformers' bitsandbytes layout, which reads back to
    /// the same 4-bit weights (and so the same loss) as quantizing while loading.
    func testQuantizeWritesTheBitsandbytesFormat() throws {
        let out = try makeTempDir(self) + "/q"
        let s = try Quantizer.quantize(modelDir: Fixtures.dir("llama"), outDir: out)
        XCTAssertEqual(s.quantized, 14)
        let file = try SafeTensorsFile(path: out + "/model.safetensors")
        let name = "model.layers.0.self_attn.q_proj.weight"
        for suffix in ["", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4"] {
            XCTAssertNotNil(file.tensors[name + suffix], name + suffix)
        }
        XCTAssertEqual(file.tensors[name]?.shape, [64 * 64 / 2, 1])
        let cfg = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        XCTAssertTrue(cfg.contains("\"quant_method\": \"bitsandbytes\""))
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(cfg.utf8)))
        let a = try loss(try Transformer.load(directory: out))
        let b = try loss(try Transformer.load(directory: Fixtures.dir("llama"), quantize: QuantizationSpec()))
        XCTAssertEqual(a, b, accuracy: 1e-9)
        // The packed codes equal the ones bitsandbytes wrote for the same weights.
        let theirs = try SafeTensorsFile(path: Fixtures.dir("nf4") + "/llama-4bit/model.safetensors")
        XCTAssertEqual(try file.floatArray(name), try theirs.floatArray(name))
        assertMoETuneError(try Quantizer.quantize(modelDir: Fixtures.dir("llama"), outDir: out), contains: [out, "not empty"])
    }
}
