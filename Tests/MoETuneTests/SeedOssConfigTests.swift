import XCTest
@testable import MoECore

/// Seed-OSS's config.json reading: SeedOssConfig's defaults (q/k/v biases on, o_proj bias
/// off, head_dim 128, bos 0), `head_dim: null`, the fixture's o_proj bias and the refusals.
/// Its logits, eval, greedy decoding, peft gradients, merge, adapters and NF4 are checked by
/// FamilyTests on the seed_oss and train-seed_oss fixtures.
final class SeedOssConfigTests: XCTestCase {
    func parse(_ json: [String: Any], in dir: String) throws -> ModelConfig {
        var base: [String: Any] = ["model_type": "seed_oss", "hidden_size": 64, "num_attention_heads": 4,
                                   "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 100]
        for (k, v) in json { base[k] = v }
        return try ModelConfig.parse(try JSONSerialization.data(withJSONObject: base), path: dir + "/config.json")
    }

    func testDefaultsAndFixture() throws {
        let dir = try makeTempDir(self)
        let d = try parse([:], in: dir)
        XCTAssertEqual(d.family, .seedOss)
        XCTAssertTrue(d.qkvBias)
        XCTAssertFalse(d.oBias)
        XCTAssertEqual(d.headDim, 128)
        XCTAssertEqual(d.bosTokenId, 0)
        XCTAssertEqual(d.eosTokenIds, [2])
        XCTAssertNil(d.slidingWindow)
        // The released config.json: dropouts 0.1 (training only in transformers) are read.
        let released = try parse(["attention_dropout": 0.1, "residual_dropout": 0.1, "attention_out_bias": false,
                                  "head_dim": NSNull(), "rope_theta": 1e7], in: dir)
        XCTAssertEqual(released.headDim, 16, "head_dim null: hidden_size / num_attention_heads")
        XCTAssertEqual(released.ropeTheta, 1e7)
        XCTAssertFalse(try parse(["attention_bias": false], in: dir).qkvBias)
        let f = try ModelConfig.load(directory: Fixtures.dir("seed_oss"))
        XCTAssertTrue(f.qkvBias)
        XCTAssertTrue(f.oBias)
        XCTAssertEqual(f.headDim, 16)
    }

    func testRefusals() throws {
        let dir = try makeTempDir(self)
        assertMoETuneError(try parse(["mlp_bias": true], in: dir), contains: ["mlp_bias"])
        assertMoETuneError(try parse(["residual_dropout": 1.5], in: dir), contains: ["residual_dropout"])
        assertMoETuneError(try parse(["head_dim": NSNull(), "hidden_size": 60, "num_attention_heads": 4], in: dir),
                           contains: ["head_dim", "15"])
        XCTAssertNoThrow(try parse(["mlp_bias": false], in: dir))
    }
}
