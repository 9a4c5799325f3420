import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// GPT-OSS training against peft 0.21 + transformers 5.23 (scripts/make_gptoss_train_fixture.py):
/// the gpt_oss-clamp model (swiglu_limit 0.6: every clamp of the SwiGLU is hit; random
/// biases and sinks; router margins >= 1e-4) with peft's own adapter train-gpt_oss on
/// q/k/v/o, lm_head, the router weight (target_parameters mlp.router.weight) and the fused
/// experts (target_parameters experts.gate_up_proj — interleaved gate/up columns — and
/// experts.down_proj). moe-tune reads the fused adapter as per-expert gate/up/down adapters
/// (gate and up share peft's A), trains those, and its gradients mapped back onto peft's
/// fused tensors (d A = d A_gate + d A_up; d B's rows re-interleaved) are compared.
/// Tolerances: loss 1e-5 relative, every gradient tensor 1e-4 relative to its max norm.
/// The per-expert equivalent (gate and up with their own A) is train-gpt_oss-experts.
extension FamilyTests {
    /// moe-tune's gradients of `adapters` in peft's key names for gpt_oss (fused experts).
    func gptOssPeftGradients(_ adapters: AdapterSet, model: Transformer) -> [String: [Float]] {
        let c = model.config, f = model.family, e = c.numExperts, inter = c.expertIntermediateSize
        let prefix = "base_model.model."
        var out: [String: [Float]] = [:]
        var byModule: [String: LoRAAdapter] = [:]
        for a in adapters.all { byModule[a.module] = a }
        for a in adapters.all {
            guard case .expert? = f.parse(module: a.module)?.slot else {
                out[prefix + a.module + ".lora_A.weight"] = Array(UnsafeBufferPointer(start: a.gradA, count: a.rank * a.inFeatures))
                out[prefix + a.module + ".lora_B.weight"] = Array(UnsafeBufferPointer(start: a.gradB, count: a.rank * a.outFeatures))
                continue
            }
        }
        for l in 0..<c.numLayers {
            let mods = { (x: Int, p: FeedForwardPart) in byModule[f.module(.expert(x, p), layer: l)] }
            guard let r = mods(0, .gate)?.rank else { continue }
            let h = c.hiddenSize
            var guA = [Float](repeating: 0, count: e * r * h), guB = [Float](repeating: 0, count: 2 * inter * r * e)
            var dA = [Float](repeating: 0, count: e * r * inter), dB = [Float](repeating: 0, count: h * r * e)
            for x in 0..<e {
                let g = mods(x, .gate)!, u = mods(x, .up)!, d = mods(x, .down)!
                for i in 0..<(r * h) { guA[x * r * h + i] = g.gradA[i] + u.gradA[i] }
                for row in 0..<inter {
                    for j in 0..<r {
                        guB[(2 * row) * r * e + j * e + x] = g.gradB[row * r + j]
                        guB[(2 * row + 1) * r * e + j * e + x] = u.gradB[row * r + j]
                    }
                }
                for i in 0..<(r * inter) { dA[x * r * inter + i] = d.gradA[i] }
                for row in 0..<h { for j in 0..<r { dB[row * r * e + j * e + x] = d.gradB[row * r + j] } }
            }
            let base = prefix + "model.layers.\(l).mlp.experts."
            out[base + "base_layer.lora_A.weight"] = guA
            out[base + "base_layer.lora_B.weight"] = guB
            out[base + "lora_A.weight"] = dA
            out[base + "lora_B.weight"] = dB
        }
        return out
    }

    func checkGptOssGradients(file: String, lossKey: String, auxCoef: Float, nf4: Bool = false) throws {
        let model = try Transformer.load(directory: Fixtures.dir("gpt_oss-clamp"), quantize: nf4 ? QuantizationSpec(doubleQuant: true) : nil)
        model.moe.auxLossCoef = auxCoef
        let dir = Fixtures.dir("train-gpt_oss")
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        XCTAssertEqual(Set(adapters.all.compactMap { model.kind(of: $0.module) }),
                       [.query, .key, .value, .projection, .mlp, .router, .head])
        let ref = try SafeTensorsFile(path: dir + "/batch.safetensors")
        let (tb, mask) = try batch(ref, labels: "labels")
        let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: true, loraRank: adapters.maxRank)
        let grads = BackwardState(for: state, config: model.config)
        adapters.store.zeroGrads()
        let (sum, count) = try model.forward(tb, state: state, adapters: adapters)
        // logits (before backward overwrites them) against peft's unmerged model.
        let logitDiff = maxDiff(state.logits.pointer, try ref.floatArray("logits"), mask: mask, v: model.config.vocabSize)
        if !nf4 { XCTAssertLessThanOrEqual(logitDiff, 1e-4) }
        model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
        let loss = sum / Double(count) + Double(auxCoef) * state.auxLoss
        let g = try SafeTensorsFile(path: dir + "/" + file)
        let refLoss = Double(try (nf4 ? g : ref).floatArray(lossKey)[0])
        XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, "gpt_oss loss \(loss) vs reference \(refLoss)")
        if auxCoef != 0 {
            let refAux = Double(try ref.floatArray("aux_loss")[0])
            XCTAssertLessThanOrEqual(abs(state.auxLoss - refAux) / refAux, 1e-5, "gpt_oss aux loss \(state.auxLoss) vs \(refAux)")
        }
        let ours = gptOssPeftGradients(adapters, model: model)
        let keys = g.tensors.keys.filter { $0 != "loss" }
        XCTAssertEqual(Set(keys), Set(ours.keys))
        var worst: Double = 0
        for key in keys.sorted() {
            let expected = try g.floatArray(key)
            guard let mine = ours[key], mine.count == expected.count else { XCTFail("\(key): missing or wrong size"); continue }
            let scale = expected.map { abs($0) }.max() ?? 0
            let diff = zip(mine, expected).map { abs($0 - $1) }.max() ?? 0
            XCTAssertGreaterThan(scale, 0, "\(key): reference gradient is zero")
            worst = max(worst, Double(diff / max(scale, 1e-30)))
            XCTAssertLessThanOrEqual(Double(diff / scale), 1e-4, key)
        }
        print("gpt_oss \(file): \(adapters.all.count) adapters, logits max |diff| \(logitDiff), loss \(loss) vs \(refLoss), worst gradient error \(worst)")
    }

    /// The per-expert equivalent (train-gpt_oss-experts, plain torch on transformers' GptOss):
    /// moe-tune's own per-expert module names, each expert's gate and up with their own A, the
    /// router LoRA before the router bias; loss 1e-5 relative and every gradient 1e-4 relative
    /// to its max norm, without and with the aux loss (0.02, aux loss 1e-5).
    func testGptOssPerExpertGradientsMatchTorch() throws {
        for (file, lossKey, coef) in [("grads.safetensors", "loss", Float(0)), ("grads_aux.safetensors", "loss_aux", 0.02)] {
            let kinds = try checkGradients("gpt_oss-clamp", file: file, lossKey: lossKey, auxCoef: coef, adapter: "train-gpt_oss-experts")
            XCTAssertEqual(kinds, [.query, .key, .value, .projection, .mlp, .router, .head], file)
        }
    }

    func testGptOssGradientsMatchPeft() throws {
        try checkGptOssGradients(file: "grads.safetensors", lossKey: "loss", auxCoef: 0)
    }

    /// QLoRA: the same adapter on the NF4 base (double quantization) against peft on
    /// bitsandbytes' quantize-dequantize of the same weights: loss 1e-5, gradients 1e-4.
    func testGptOssQLoRAGradientsMatchPeftOnBitsandbytesWeights() throws {
        try checkGptOssGradients(file: "grads_nf4.safetensors", lossKey: "loss", auxCoef: 0, nf4: true)
    }

    /// With output_router_logits (transformers adds 0.02 * load_balancing_loss_func).
    func testGptOssAuxLossAndGradientsMatchPeft() throws {
        try checkGptOssGradients(file: "grads_aux.safetensors", lossKey: "loss_aux", auxCoef: 0.02)
    }

    /// Merged into the checkpoint layout transformers 5 reads (gate_up_proj [E, H, 2I] with
    /// gate/up interleaved, down_proj [E, I, H], biases and sinks passed through) and reloaded:
    /// peft's unmerged logits within 1e-4. (scripts/check_merge.py loads the same folder in
    /// transformers; README gives its figure.)
    func testGptOssMergedMatchesPeftUnmerged() throws {
        let out = try makeTempDir(self) + "/merged"
        let summary = try Merger.merge(modelDir: Fixtures.dir("gpt_oss-clamp"), adapters: [(Fixtures.dir("train-gpt_oss"), 1)], outDir: out)
        XCTAssertEqual(summary.mergedModules, 52)
        let file = try SafeTensorsFile(path: out + "/model.safetensors")
        let base = try SafeTensorsFile(path: Fixtures.dir("gpt_oss-clamp") + "/model.safetensors")
        XCTAssertEqual(Set(file.tensors.keys), Set(base.tensors.keys))
        XCTAssertEqual(file.shape("model.layers.0.mlp.experts.gate_up_proj"), [4, 40, 48])
        XCTAssertEqual(file.shape("model.layers.0.mlp.experts.down_proj"), [4, 24, 40])
        XCTAssertEqual(try file.floatArray("model.layers.1.mlp.experts.gate_up_proj_bias"),
                       try base.floatArray("model.layers.1.mlp.experts.gate_up_proj_bias"))
        // The merged experts and routers equal peft's merge_and_unload (1e-6 absolute; weights ~0.1).
        let peftMerged = try SafeTensorsFile(path: Fixtures.dir("train-gpt_oss") + "/merged.safetensors")
        XCTAssertEqual(peftMerged.tensors.count, 9)
        for key in peftMerged.tensors.keys.sorted() {
            let mine = try file.floatArray(key), theirs = try peftMerged.floatArray(key), old = try base.floatArray(key)
            XCTAssertEqual(mine.count, theirs.count, key)
            let diff = zip(mine, theirs).map { abs($0 - $1) }.max() ?? 0
            let change = zip(old, theirs).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(diff, 1e-6, key)
            XCTAssertGreaterThan(change, 1e-3, "\(key): the adapter changed nothing")
        }
        let model = try Transformer.load(directory: out)
        let ref = try SafeTensorsFile(path: Fixtures.dir("train-gpt_oss") + "/batch.safetensors")
        let (tb, mask) = try batch(ref)
        let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false)
        _ = try model.forward(tb, state: state)
        let diff = maxDiff(state.logits.pointer, try ref.floatArray("logits"), mask: mask, v: model.config.vocabSize)
        print("merged gpt_oss vs peft unmerged: max |diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 1e-4)
    }

    func gptOssLogits(_ model: Transformer, _ adapters: AdapterSet?) throws -> [Float] {
        let ref = try SafeTensorsFile(path: Fixtures.dir("train-gpt_oss") + "/batch.safetensors")
        let (tb, _) = try batch(ref)
        let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false, loraRank: adapters?.maxRank ?? 0)
        _ = try model.forward(tb, state: state, adapters: adapters)
        return Array(UnsafeBufferPointer(start: state.logits.pointer, count: tb.batch * tb.seq * model.config.vocabSize))
    }

    /// moe-tune's GPT-OSS adapters are written in peft's fused target_parameters layout
    /// (gate and up side by side at rank 2r, alpha doubled through rank/alpha_pattern; the
    /// router as mlp.router.weight) and read back to the same logits (1e-5). Set
    /// GPTOSS_ADAPTER_OUT=DIR to keep the adapter written from peft's fixture adapter, for
    /// scripts/check_peft_load.py --model gpt_oss-clamp --adapter DIR --merged (its merge).
    func testGptOssAdapterWrittenInPeftLayout() throws {
        let model = try Transformer.load(directory: Fixtures.dir("gpt_oss-clamp"))
        var spec = LoRASpec(rank: 3, alpha: 5, targets: [.query, .key, .value, .projection, .mlp, .router, .head])
        spec.overrides[.router] = LoRAShape(rank: 2, alpha: 7)
        let adapters = try AdapterSet(model: model, spec: spec, seed: 3)
        var rng = SplitMix64(seed: 11)
        for a in adapters.all { for i in 0..<(a.rank * a.outFeatures) { a.b[i] = (rng.nextFloat() * 2 - 1) * 0.2 } }
        let before = try gptOssLogits(model, adapters), base = try gptOssLogits(model, nil)
        let dir = try makeTempDir(self) + "/adapter"
        try PEFTAdapter.save(adapters, family: model.family, baseModel: "gpt_oss-clamp", to: dir)
        let cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(cfg["target_modules"] as? [String], ["k_proj", "lm_head", "o_proj", "q_proj", "v_proj"])
        XCTAssertEqual(cfg["target_parameters"] as? [String], ["mlp.experts.down_proj", "mlp.experts.gate_up_proj", "mlp.router.weight"])
        XCTAssertEqual((cfg["rank_pattern"] as? [String: Int])?["mlp\\.experts\\.gate_up_proj"], 6)
        XCTAssertEqual((cfg["alpha_pattern"] as? [String: Double])?["mlp\\.experts\\.gate_up_proj"], 10)
        let file = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        XCTAssertEqual(file.shape("base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.weight"), [4 * 6, 40])
        XCTAssertEqual(file.shape("base_model.model.model.layers.1.mlp.experts.base_layer.lora_B.weight"), [48, 6 * 4])
        XCTAssertEqual(file.shape("base_model.model.model.layers.1.mlp.experts.lora_A.weight"), [4 * 3, 24])
        XCTAssertEqual(file.shape("base_model.model.model.layers.1.mlp.router.lora_A.weight"), [2, 40])
        let back = try PEFTAdapter.load(directory: dir, model: model)
        let after = try gptOssLogits(model, back)
        let diff = zip(before, after).map { abs($0 - $1) }.max() ?? 0
        let effect = zip(before, base).map { abs($0 - $1) }.max() ?? 0
        print("gpt_oss adapter written and read back: logits max |diff| \(diff) (the adapter moves them by \(effect))")
        XCTAssertLessThanOrEqual(diff, 1e-5)
        XCTAssertGreaterThan(effect, 1e-2)
        if let keep = ProcessInfo.processInfo.environment["GPTOSS_ADAPTER_OUT"] {
            let peft = try PEFTAdapter.load(directory: Fixtures.dir("train-gpt_oss"), model: model)
            try PEFTAdapter.save(peft, family: model.family, baseModel: "gpt_oss-clamp", to: keep)
        }
    }

    /// QLoRA: q/k/v/o and each fused expert tensor quantized whole to NF4 as bitsandbytes'
    /// quantize_4bit does (gate_up_proj [E, H, 2I] flattened as stored): the loss equals
    /// bitsandbytes' quantize-dequantize of the same weights (1e-5 relative, both with and
    /// without double quantization); the NF4 loss differs from the fp32 one by far more.
    func testGptOssNF4LossMatchesBitsandbytes() throws {
        let ref = try SafeTensorsFile(path: Fixtures.dir("train-gpt_oss") + "/batch.safetensors")
        let (tb, _) = try batch(ref)
        let fp32 = try Transformer.load(directory: Fixtures.dir("gpt_oss-clamp"))
        let s0 = ForwardState(config: fp32.config, batch: tb.batch, seq: tb.seq, training: false)
        let (sum0, count0) = try fp32.forward(tb, state: s0)
        let full = sum0 / Double(count0)
        for (doubleQuant, key) in [(false, "nf4_loss_single"), (true, "nf4_loss")] {
            let model = try Transformer.load(directory: Fixtures.dir("gpt_oss-clamp"), quantize: QuantizationSpec(doubleQuant: doubleQuant))
            XCTAssertTrue(model.isQuantized)
            XCTAssertNotNil(model.layers[0].experts[1].gate.transposed)
            XCTAssertNil(model.layers[0].router?.nf4, "routers stay fp32")
            let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false)
            let (sum, count) = try model.forward(tb, state: state)
            let expected = (try Fixtures.referenceJSON("gpt_oss-clamp")[key] as! NSNumber).doubleValue
            let loss = sum / Double(count)
            print("gpt_oss NF4 (double quant \(doubleQuant)): loss \(loss) vs bitsandbytes-quantized \(expected), fp32 \(full)")
            XCTAssertLessThanOrEqual(abs(loss - expected) / expected, 1e-5, key)
            XCTAssertGreaterThan(abs(full - expected) / expected, 1e-4, "quantization must matter at this scale")
        }
    }

    /// TransposedWeight's products (several chunks) equal plain products with the dequantized
    /// weight picked out of the fused tensor: W[o, k] = S[off + k, stride * o + part] (1e-5).
    func testTransposedWeightProducts() throws {
        let saved = ChunkedMatmul.chunkFloats
        ChunkedMatmul.chunkFloats = 100   // 2 rows of S per chunk: 3 chunks and a partial one
        defer { ChunkedMatmul.chunkFloats = saved }
        let (e, k, cols, n) = (3, 7, 48, 5)
        var rng = SplitMix64(seed: 4)
        let src = (0..<(e * k * cols)).map { _ in rng.nextFloat() * 2 - 1 }
        let nf4 = src.withUnsafeBufferPointer { NF4Weight.quantize($0.baseAddress!, rows: e * k, cols: cols, doubleQuant: true) }
        var deq = [Float](repeating: 0, count: e * k * cols)
        nf4.dequantizeRows(0, e * k, into: &deq)
        let x = (0..<(n * k)).map { _ in rng.nextFloat() * 2 - 1 }
        for (stride, part) in [(2, 0), (2, 1), (1, 0)] {
            let out = cols / stride, off = k
            let t = TransposedWeight(storage: nf4, rowOffset: off, inFeatures: k, stride: stride, part: part)
            var w = [Float](repeating: 0, count: out * k)
            for o in 0..<out { for kk in 0..<k { w[o * k + kk] = deq[(off + kk) * cols + stride * o + part] } }
            var y = [Float](repeating: 1, count: n * out), yRef = y
            linearForward(y: &y, x: x, rows: n, weight: Matrix(transposed: t), accumulate: true)
            linearForward(y: &yRef, x: x, rows: n, weight: Matrix(w, rows: out, cols: k), accumulate: true)
            let dy = (0..<(n * out)).map { _ in rng.nextFloat() * 2 - 1 }
            var dx = [Float](repeating: 0, count: n * k), dxRef = dx
            linearBackwardInput(dx: &dx, dy: dy, rows: n, weight: Matrix(transposed: t), accumulate: false)
            linearBackwardInput(dx: &dxRef, dy: dy, rows: n, weight: Matrix(w, rows: out, cols: k), accumulate: false)
            XCTAssertLessThan(zip(y, yRef).map { abs($0 - $1) }.max()!, 1e-5, "forward stride \(stride) part \(part)")
            XCTAssertLessThan(zip(dx, dxRef).map { abs($0 - $1) }.max()!, 1e-5, "backward stride \(stride) part \(part)")
        }
    }

    /// Generation with GPT-OSS adapters: the KV-cache decoder's logits equal the batched
    /// forward's (1e-4) with peft's fused adapter and with the per-expert one, on the fp32 and
    /// the NF4 model (31 tokens: the sliding window of 3 is passed many times).
    func testGptOssDecoderWithAdaptersEqualsBatchedForward() throws {
        for quantize in [false, true] {
            let model = try Transformer.load(directory: Fixtures.dir("gpt_oss-clamp"),
                                             quantize: quantize ? QuantizationSpec(doubleQuant: true) : nil)
            for adapterDir in ["train-gpt_oss", "train-gpt_oss-experts"] {
                let adapters = try PEFTAdapter.load(directory: Fixtures.dir(adapterDir), model: model)
                let seq: [Int32] = [1] + (0..<30).map { Int32(3 + ($0 * 37) % 370) }
                let d = Decoder(model: model, adapters: adapters, maxLength: 64)
                let state = ForwardState(config: model.config, batch: 1, seq: seq.count, training: false, loraRank: adapters.maxRank)
                _ = try model.forward(TokenBatch(sequences: [seq], counted: [Array(repeating: false, count: seq.count)]),
                                      state: state, adapters: adapters)
                var worst: Float = 0
                let v = model.config.vocabSize
                for (i, t) in seq.enumerated() {
                    let l = try d.step(t)
                    for j in 0..<v { worst = max(worst, abs(l[j] - state.logits[i * v + j])) }
                }
                print("gpt_oss decoder vs batched, \(adapterDir)\(quantize ? " NF4" : ""): max |diff| \(worst)")
                XCTAssertLessThan(worst, 1e-4, adapterDir)
            }
        }
    }
}
