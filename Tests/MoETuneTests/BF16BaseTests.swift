import CKernels
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The bf16 frozen base (`base_dtype: bf16-emulated`) against torch / transformers / peft on
/// the fixtures of scripts/make_bf16_base_fixtures.py (Fixtures/bf16-base):
/// - widening kernels vs the scalar definition on all 65,536 bf16 values: tolerance 0 (bits);
/// - fp32 → bf16 rounding vs torch on edge cases and 4,096 random floats: tolerance 0 (bits;
///   a NaN must give a NaN);
/// - the model with bf16-rounded linear weights vs transformers on the same rounding: logits
///   max |diff| <= 1e-4, loss 1e-5 relative; LoRA gradients vs peft 1e-4 (max-norm relative);
/// - against the original fp32 model: logits <= 5e-3 (measured 1.2e-3), loss 1e-4 relative;
/// - a short training run with the bf16 base ends within 1% of the fp32 run's loss.
final class BF16BaseTests: XCTestCase {
    func testWideningKernelsAreExact() throws {
        let all = (0...0xFFFF).map { UInt16($0) }
        var ran = 0
        for kernel in 0...2 where mt_bf16_kernel_supported(Int32(kernel)) != 0 {
            ran += 1
            // Every length 0...70 at odd offsets (vector bodies and scalar tails), then all values.
            for (offset, count) in (0...70).map({ (($0 * 977) % 60000, $0) }) + [(0, all.count)] {
                var out = [Float](repeating: .nan, count: count)
                all.withUnsafeBufferPointer { src in
                    out.withUnsafeMutableBufferPointer {
                        XCTAssertEqual(mt_bf16_widen_with(Int32(kernel), $0.baseAddress, src.baseAddress! + offset, count), 0)
                    }
                }
                for i in 0..<count {
                    let want = UInt32(all[offset + i]) << 16
                    if out[i].bitPattern != want {
                        XCTFail("kernel \(kernel): bf16 \(String(all[offset + i], radix: 16)) widened to \(String(out[i].bitPattern, radix: 16)), want \(String(want, radix: 16))")
                        return
                    }
                }
            }
        }
        XCTAssertGreaterThanOrEqual(ran, 1)
        print("bf16 widening: \(ran) kernels checked, the one in use: \(String(cString: mt_bf16_kernel()))")
    }

    func testRoundingMatchesTorch() throws {
        let f = try SafeTensorsFile(path: Fixtures.dir("bf16-base") + "/conversion.safetensors")
        let x = try f.floatArray("input"), want = try f.intArray("bf16_bits")
        XCTAssertEqual(x.count, want.count)
        let w = x.withUnsafeBufferPointer { BF16Weight(rounding: $0.baseAddress!, rows: 1, cols: x.count) }
        var nans = 0
        for i in 0..<x.count {
            let got = w.bits[i], expect = UInt16(want[i])
            XCTAssertEqual(got, FloatConversion.floatToBF16(x[i]))
            if x[i].isNaN {
                // torch writes every NaN as 0x7FC0; moe-tune keeps the sign and top payload bits
                // with the quiet bit set, as gguf does. Both are NaN.
                XCTAssertTrue(FloatConversion.bf16ToFloat(got).isNaN && FloatConversion.bf16ToFloat(expect).isNaN)
                nans += 1
            } else {
                XCTAssertEqual(got, expect, "fp32 \(String(x[i].bitPattern, radix: 16)) rounds to \(String(got, radix: 16)), torch \(String(expect, radix: 16))")
            }
        }
        XCTAssertGreaterThan(nans, 3)
    }

    /// Logits and loss of `model` on a reference file's batch (as ForwardParityTests).
    func logits(_ model: Transformer, _ ref: SafeTensorsFile) throws -> (maxDiff: Float, loss: Double, refLoss: Double) {
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), mask = try ref.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        var lengths = [Int](repeating: 0, count: b)
        for i in 0..<b {
            lengths[i] = (0..<t).filter { mask[i * t + $0] == 1 }.count
            for j in 0..<(t - 1) where mask[i * t + j + 1] == 1 { targets[i * t + j] = ids[i * t + j + 1] }
        }
        let state = ForwardState(config: model.config, batch: b, seq: t, training: false)
        let (sum, count) = try model.forward(TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths), state: state)
        let refLogits = try ref.floatArray("logits"), v = model.config.vocabSize
        var maxDiff: Float = 0
        for i in 0..<b { for j in 0..<t where mask[i * t + j] == 1 { for k in 0..<v {
            let idx = (i * t + j) * v + k
            maxDiff = max(maxDiff, abs(state.logits[idx] - refLogits[idx]))
        } } }
        return (maxDiff, sum / Double(count), Double(try ref.floatArray("loss")[0]))
    }

    func testRoundedBaseMatchesTransformers() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"), base: .bf16Emulated)
        // What is held in bf16 and what stays fp32.
        let l0 = model.layers[0]
        for m in [l0.q, l0.k, l0.v, l0.o, l0.experts[0].gate, l0.experts[3].up, l0.experts[1].down] { XCTAssertNotNil(m.bf16) }
        for m in [model.embed, model.lmHead, l0.router!] { XCTAssertNil(m.bf16) }
        let r = try logits(model, try SafeTensorsFile(path: Fixtures.dir("bf16-base") + "/reference.safetensors"))
        let rel = abs(r.loss - r.refLoss) / r.refLoss
        print("bf16 base vs transformers on the same rounding: logits max |diff| \(r.maxDiff), loss rel \(rel)")
        XCTAssertLessThanOrEqual(r.maxDiff, 1e-4)
        XCTAssertLessThanOrEqual(rel, 1e-5)
        // Against the fp32 model it was rounded from: the bf16 tolerance.
        let f = try logits(model, try Fixtures.reference("mixtral"))
        let frel = abs(f.loss - f.refLoss) / f.refLoss
        print("bf16 base vs the fp32 model: logits max |diff| \(f.maxDiff), loss rel \(frel)")
        XCTAssertLessThanOrEqual(f.maxDiff, 5e-3)
        XCTAssertGreaterThan(f.maxDiff, 1e-5, "rounding to bf16 must change the logits (else the bf16 path did not run)")
        XCTAssertLessThanOrEqual(frel, 1e-4)
    }

    /// A checkpoint stored in BF16 is taken as it is (the same bits, no fp32 copy) and runs
    /// as transformers runs it in fp32.
    func testStoredBF16IsTakenAsIs() throws {
        let dir = Fixtures.dir("mixtral-bf16")
        let model = try Transformer.load(directory: dir, base: .bf16Emulated)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        let info = try XCTUnwrap(file.tensors["model.layers.1.self_attn.k_proj.weight"])
        XCTAssertEqual(info.dtype, .bf16)
        let q = try XCTUnwrap(model.layers[1].k.bf16)
        let raw = file.bytes(of: info)
        for i in 0..<(q.rows * q.cols) { XCTAssertEqual(q.bits[i], raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        let r = try logits(model, try Fixtures.reference("mixtral-bf16"))
        XCTAssertLessThanOrEqual(r.maxDiff, 1e-4)
        XCTAssertLessThanOrEqual(abs(r.loss - r.refLoss) / r.refLoss, 1e-5)
    }

    /// A GGUF storing BF16 (moe-tune's conversion of the tiny GGUF fixture) is taken as it is,
    /// llama.cpp's q/k row permutation undone: the same bits as the fp32 reading of that file,
    /// and the same logits (1e-5).
    func testGGUFBF16IsTakenAsIs() throws {
        let dir = try makeTempDir(self)
        let out = dir + "/bf16.gguf"
        _ = try GGUFExport.mergedModel(model: Fixtures.dir("gguf/tiny-llama") + "/model.gguf", adapters: [], out: out,
                                       type: .bf16, overwrite: false)
        XCTAssertEqual(try GGUFFile(path: out).tensor("blk.0.attn_q.weight")?.type, .bf16)
        let gguf = try Transformer.load(directory: out, base: .bf16Emulated)
        let fp32 = try Transformer.load(directory: out)
        for (a, b) in [(fp32.layers[0].q, gguf.layers[0].q), (fp32.layers[1].k, gguf.layers[1].k), (fp32.layers[1].o, gguf.layers[1].o)] {
            let y = try XCTUnwrap(b.bf16)
            XCTAssertNil(a.bf16)
            XCTAssertEqual([a.rows, a.cols], [y.rows, y.cols])
            for i in 0..<(y.rows * y.cols) where FloatConversion.bf16ToFloat(y.bits[i]).bitPattern != a.pointer[i].bitPattern {
                XCTFail("element \(i): bf16 \(y.bits[i]) vs fp32 \(a.pointer[i])"); break
            }
        }
        let t = 12
        let ids = (0..<t).map { Int32(1 + ($0 * 37) % (gguf.config.vocabSize - 1)) }
        let batch = TokenBatch(sequences: [ids], counted: [Array(repeating: true, count: t)])
        let sa = ForwardState(config: gguf.config, batch: 1, seq: t, training: false)
        let sb = ForwardState(config: fp32.config, batch: 1, seq: t, training: false)
        _ = try gguf.forward(batch, state: sa)
        _ = try fp32.forward(batch, state: sb)
        var diff: Float = 0
        for i in 0..<(t * gguf.config.vocabSize) { diff = max(diff, abs(sa.logits[i] - sb.logits[i])) }
        XCTAssertLessThanOrEqual(diff, 1e-5)
    }

    func testLoRAGradientsMatchPeftOnTheRoundedBase() throws {
        // Several chunks per product, the last one partial (3 rows of 64 a chunk).
        let saved = ChunkedMatmul.chunkFloats
        ChunkedMatmul.chunkFloats = 230
        defer { ChunkedMatmul.chunkFloats = saved }
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"), base: .bf16Emulated)
        let dir = Fixtures.dir("bf16-base")
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        let ref = try SafeTensorsFile(path: dir + "/batch.safetensors")
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), labels = try ref.intArray("labels"), mask = try ref.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        for i in 0..<b { for j in 0..<(t - 1) where labels[i * t + j + 1] != -100 { targets[i * t + j] = labels[i * t + j + 1] } }
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let state = ForwardState(config: model.config, batch: b, seq: t, training: true, loraRank: adapters.maxRank)
        let grads = BackwardState(for: state, config: model.config)
        adapters.store.zeroGrads()
        let (sum, count) = try model.forward(TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths),
                                             state: state, adapters: adapters)
        model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
        let loss = sum / Double(count), refLoss = Double(try ref.floatArray("loss")[0])
        XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, "loss \(loss) vs peft \(refLoss)")
        let g = try SafeTensorsFile(path: dir + "/grads.safetensors")
        XCTAssertEqual(g.tensors.count, 2 * adapters.all.count)
        var worst: Float = 0
        for a in adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let key = "base_model.model.\(a.module).\(suffix).weight"
                let expected = try g.floatArray(key)
                XCTAssertEqual(expected.count, n, key)
                let scale = expected.map { abs($0) }.max() ?? 0
                XCTAssertGreaterThan(scale, 0, key)
                var diff: Float = 0
                for i in 0..<n { diff = max(diff, abs(ptr[i] - expected[i])) }
                worst = max(worst, diff / scale)
                XCTAssertLessThanOrEqual(diff / scale, 1e-4, key)
            }
        }
        print("bf16 base: \(adapters.all.count) adapters, loss \(loss) vs peft \(refLoss), worst gradient error \(worst)")
    }

    func testRefusals() throws {
        let dir = Fixtures.dir("mixtral")
        XCTAssertThrowsError(try Transformer.load(directory: dir, quantize: QuantizationSpec(), base: .bf16Emulated)) { e in
            XCTAssertTrue("\(e)".contains("exclude each other"), "\(e)")
        }
        // No native kernel ships: plain bf16 is refused on every CPU, naming the opt-in.
        XCTAssertThrowsError(try Transformer.load(directory: dir, base: .bf16)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("bf16-emulated") && !s.contains("\n"), s)
            XCTAssertTrue(s.contains(BaseDType.nativeUnits == nil ? "no AVX512_BF16" : "ships no native"), s)
        }
    }

    func trainYAML(_ dir: String, base: BaseDType) -> String {
        """
        model: \(Fixtures.dir("mixtral"))
        base_dtype: \(base.rawValue)
        data:
          train: \(dir)/train.jsonl
          valid: \(dir)/train.jsonl
        lora:
          rank: 4
          targets: [query, key, value, projection, mlp]
        optimizer:
          lr: 1.0e-2
        training:
          batch_size: 4
          max_steps: 20
          eval_every: 20
          max_seq_len: 32
          out_dir: \(dir)/out-\(base.rawValue)
        """
    }

    /// 20 steps with the bf16 base end within 1% of the fp32 run's validation loss, and the
    /// two runs differ (the bf16 base was used).
    func testShortTrainingMatchesFP32() throws {
        let dir = try makeTempDir(self)
        var text = ""
        for i in 0..<24 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        var last: [BaseDType: Double] = [:]
        for base in [BaseDType.fp32, .bf16Emulated] {
            let path = dir + "/\(base.rawValue).yaml"
            try Data(trainYAML(dir, base: base).utf8).write(to: URL(fileURLWithPath: path))
            let cfg = try TrainConfig.load(path: path, overrides: [])
            XCTAssertEqual(cfg.baseDType, base)
            let s = try Trainer(config: cfg, configPath: path).run(overwrite: false)
            last[base] = s.lastValidLoss!
            XCTAssertLessThan(s.lastValidLoss!, s.firstValidLoss! - 0.3)
        }
        let (a, b) = (last[.fp32]!, last[.bf16Emulated]!)
        print("20 steps: fp32 valid loss \(a), bf16-emulated \(b), rel \(abs(a - b) / a)")
        XCTAssertLessThanOrEqual(abs(a - b) / a, 0.01)
        XCTAssertNotEqual(a, b)
    }

    func testConfigKey() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/c.yaml"
        let yaml = trainYAML(dir, base: .bf16Emulated)
        for (extra, expect) in [("base_dtype: bf17", "base_dtype"),
                                ("quantization: {type: nf4}", "exclude each other")] {
            let text = extra.hasPrefix("base_dtype") ? yaml.replacingOccurrences(of: "base_dtype: bf16-emulated", with: extra) : yaml + "\n" + extra + "\n"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try TrainConfig.load(path: path, overrides: [])) { e in
                XCTAssertTrue("\(e)".contains(expect), "\(e)")
            }
        }
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: path))
        let c = try TrainConfig.load(path: path, overrides: [])
        XCTAssertTrue(c.resolvedYAML().contains("base_dtype: bf16-emulated"), c.resolvedYAML())
        // A run saved before the key existed (no base_dtype line) resumes as fp32; bf16 is a change.
        var fp32 = c
        fp32.baseDType = .fp32
        let now = fp32.resolvedYAML(), before = now.replacingOccurrences(of: "base_dtype: fp32\n", with: "")
        XCTAssertNotEqual(now, before)
        XCTAssertEqual(ConfigFingerprint.hash(now), ConfigFingerprint.hash(before))
        XCTAssertEqual(ConfigFingerprint.changes(from: before, to: now), [])
        XCTAssertEqual(ConfigFingerprint.changes(from: before, to: c.resolvedYAML()).filter { $0.hasPrefix("base_dtype") },
                       ["base_dtype: absent -> bf16-emulated"])
    }
}
