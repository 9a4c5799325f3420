import Foundation
import XCTest
@testable import MoETune

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
