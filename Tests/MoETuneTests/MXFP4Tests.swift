import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// MXFP4 expert tensors (GPT-OSS checkpoints) against transformers 5's
/// convert_moe_packed_tensors (scripts/make_mxfp4_fixture.py). Every value is an FP4 code
/// times a power of two, exact in fp32: the tolerance is 0 (equal values).
final class MXFP4Tests: XCTestCase {
    let tensor = "model.layers.0.mlp.experts.gate_up_proj"

    func testDequantizeMatchesTransformers() throws {
        let f = try Fixtures.reference("mxfp4")
        XCTAssertTrue(MXFP4.isStored(tensor, in: f))
        XCTAssertFalse(MXFP4.isStored("dequantized", in: f))
        let (values, shape) = try MXFP4.dequantize(tensor, in: f)
        XCTAssertEqual(shape, f.shape("dequantized"))
        let ref = try f.floatArray("dequantized")
        XCTAssertEqual(values.count, ref.count)
        let mismatches = zip(values, ref).filter { $0 != $1 }.count
        print("mxfp4: \(mismatches) of \(ref.count) values differ; range \(ref.min()!)...\(ref.max()!)")
        XCTAssertEqual(mismatches, 0)
        XCTAssertGreaterThan(Set(ref).count, 50, "the fixture must cover many codes and scales")
    }

    /// A gpt_oss checkpoint whose experts are MXFP4 blocks (scripts/make_gptoss_mxfp4_fixture.py)
    /// against transformers' logits with its own dequantization of those blocks: 1e-4.
    func testGptOssCheckpointWithMXFP4ExpertsMatchesTransformers() throws {
        let model = try Transformer.load(directory: Fixtures.dir("gpt_oss-mxfp4"))
        let ref = try Fixtures.reference("gpt_oss-mxfp4")
        let shape = ref.shape("input_ids"), (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), want = try ref.floatArray("logits")
        let tb = TokenBatch(batch: b, seq: t, ids: ids, targets: Array(repeating: -1, count: b * t), lengths: Array(repeating: t, count: b))
        let state = ForwardState(config: model.config, batch: b, seq: t, training: false)
        _ = try model.forward(tb, state: state)
        var worst: Float = 0
        for i in 0..<want.count { worst = max(worst, abs(state.logits[i] - want[i])) }
        print("gpt_oss-mxfp4: logits max |diff| \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-4)
        var json = try String(contentsOfFile: Fixtures.dir("gpt_oss-mxfp4") + "/config.json", encoding: .utf8)
        json = json.replacingOccurrences(of: "\"mxfp4\"", with: "\"fp8\"")
        assertMoETuneError(try ModelConfig.parse(Data(json.utf8), path: "config.json"), contains: ["config.json", "quantization_config", "fp8"])
    }

    /// QLoRA on MXFP4 experts: dequantized to a temporary fp32 copy and re-quantized to NF4
    /// per fused tensor (without double quantization here, so that the bound is NF4's own).
    /// Every expert weight of every layer, read back through the transposed NF4 products
    /// (x = identity), is within NF4's rounding of the fp32 model's: at most half the widest
    /// code gap (0.16) times the largest |w| of the expert, and on average within 15% of
    /// mean |w| (~9% measured; a transposed or interleaving slip gives ~140%). gpt_oss-clamp
    /// (fp32 experts, whose NF4 loss equals bitsandbytes') is checked the same way.
    func testGptOssMXFP4ExpertsQuantizeToNF4() throws {
        try checkNF4Experts("gpt_oss-clamp")
        try checkNF4Experts("gpt_oss-mxfp4")
    }

    func checkNF4Experts(_ name: String) throws {
        let fp32 = try Transformer.load(directory: Fixtures.dir(name))
        let nf4 = try Transformer.load(directory: Fixtures.dir(name), quantize: QuantizationSpec(doubleQuant: false))
        var worstRatio: Float = 0
        for l in 0..<fp32.config.numLayers {
            for (x, expert) in fp32.layers[l].experts.enumerated() {
                let q = nf4.layers[l].experts[x]
                let sliceMax = [expert.gate, expert.up, expert.down].map { m in
                    (0..<(m.rows * m.cols)).map { abs(m.pointer[$0]) }.max()! }.max()!
                for (m, t) in [(expert.gate, q.gate), (expert.up, q.up), (expert.down, q.down)] {
                    XCTAssertNotNil(t.transposed)
                    let (out, k) = (m.rows, m.cols)
                    var eye = [Float](repeating: 0, count: k * k)
                    for i in 0..<k { eye[i * k + i] = 1 }
                    var y = [Float](repeating: 0, count: k * out)   // y[i, o] = W[o, i]
                    linearForward(y: &y, x: eye, rows: k, weight: t)
                    var worst: Float = 0, sumDiff: Float = 0, sumAbs: Float = 0
                    for o in 0..<out {
                        for i in 0..<k {
                            let d = abs(y[i * out + o] - m.pointer[o * k + i])
                            worst = max(worst, d); sumDiff += d; sumAbs += abs(m.pointer[o * k + i])
                        }
                    }
                    worstRatio = max(worstRatio, worst / sliceMax)
                    XCTAssertLessThanOrEqual(worst, 0.16 * sliceMax, "\(name) layer \(l) expert \(x)")
                    XCTAssertLessThanOrEqual(sumDiff, 0.15 * sumAbs, "\(name) layer \(l) expert \(x)")
                }
            }
        }
        print("\(name) experts as NF4: worst |w_nf4 - w| / max|w| \(worstRatio)")
    }

    func testBadMXFP4TensorsAreRefusedNamingThem() throws {
        let dir = try makeTempDir(self)
        var w = SafeTensorsWriter()
        w.add(.init(name: "a_blocks", dtype: .u8, shape: [1, 2, 1, 16], data: Data(count: 32)))
        w.add(.init(name: "a_scales", dtype: .u8, shape: [1, 2, 2], data: Data(count: 4)))
        w.add(.init(name: "b_blocks", dtype: .u8, shape: [1, 2, 1, 16], data: Data(count: 32)))
        w.add(.init(name: "c_blocks", dtype: .u8, shape: [1, 1, 1, 16], data: Data(count: 16)))
        w.add(.init(name: "c_scales", dtype: .i8, shape: [1, 1, 1], data: Data(count: 1)))
        try w.write(to: dir + "/m.safetensors")
        let f = try SafeTensorsFile(path: dir + "/m.safetensors")
        assertMoETuneError(try MXFP4.dequantize("a", in: f), contains: ["m.safetensors", "a_blocks", "[1, 2, 2]"])
        assertMoETuneError(try MXFP4.dequantize("b", in: f), contains: ["m.safetensors", "b_scales"])
        assertMoETuneError(try MXFP4.dequantize("c", in: f), contains: ["m.safetensors", "c_blocks", "I8"])
    }
}
