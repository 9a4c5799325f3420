import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

final class ModelConfigTests: XCTestCase {
    func parse(_ json: String) throws -> ModelConfig {
        try ModelConfig.parse(Data(json.utf8), path: "config.json")
    }

    func testDefaultsAndNullHeadDim() throws {
        let c = try parse(#"{"model_type":"mixtral","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"head_dim":null,"sliding_window":null}"#)
        XCTAssertEqual(c.headDim, 16)
        XCTAssertEqual(c.numKVHeads, 4)
        XCTAssertEqual(c.numExperts, 8)
        XCTAssertEqual(c.expertsPerToken, 2)
        XCTAssertEqual(c.ropeTheta, 1e6)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertNil(c.slidingWindow)
        XCTAssertEqual(c.eosTokenIds, [2])
    }

    func testRopeParametersAndEOSList() throws {
        let c = try parse(#"{"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},"eos_token_id":[2,7],"tie_word_embeddings":true}"#)
        XCTAssertEqual(c.ropeTheta, 500000)
        XCTAssertEqual(c.eosTokenIds, [2, 7])
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(c.numExperts, 0)
    }

    func testRefusals() {
        let base = #""hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100"#
        assertMoETuneError(try parse("{\"model_type\":\"gpt2\",\(base)}"), contains: ["config.json", "model_type", "gpt2"])
        assertMoETuneError(try parse("{\"model_type\":\"llama\",\(base),\"num_key_value_heads\":3}"), contains: ["num_key_value_heads"])
        assertMoETuneError(try parse("{\"model_type\":\"llama\",\(base),\"rope_scaling\":{\"rope_type\":\"llama3\"}}"), contains: ["rope_scaling", "llama3"])
        assertMoETuneError(try parse("{\"model_type\":\"mixtral\",\(base),\"num_experts_per_tok\":9,\"num_local_experts\":8}"), contains: ["num_experts_per_tok"])
        assertMoETuneError(try parse("{\"model_type\":\"llama\",\(base),\"tie_word_embeddings\":1}"), contains: ["tie_word_embeddings", "true or false"])
        assertMoETuneError(try parse("{\"model_type\":\"llama\",\(base),\"hidden_act\":\"gelu\"}"), contains: ["hidden_act"])
    }

    func testSlidingWindowAppliesOnlyWhenShorterThanTheSequence() throws {
        let c = try parse(#"{"model_type":"mistral","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"sliding_window":128}"#)
        XCTAssertNil(c.attentionShape(batch: 1, seq: 128, window: c.window(layer: 0)).window)
        XCTAssertEqual(c.attentionShape(batch: 1, seq: 129, window: c.window(layer: 1)).window, 128)
    }
}

final class TokenizerTests: XCTestCase {
    func testRoundTripAndSpecialIds() throws {
        let tok = try Tokenizer(path: Fixtures.dir("llama") + "/tokenizer.model")
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.eosId, 2)
        let text = "The quick brown fox jumps over 42 lazy dogs."
        let ids = try tok.encode(text)
        XCTAssertFalse(ids.isEmpty)
        XCTAssertTrue(ids.allSatisfy { $0 > 2 && Int($0) < tok.vocabSize })
        XCTAssertEqual(try tok.decode(ids), text)
        // Byte fallback: characters outside the training text still round-trip.
        XCTAssertEqual(try tok.decode(try tok.encode("naïve ☃")), "naïve ☃")
        assertMoETuneError(try tok.decode([Int32(tok.vocabSize)]), contains: ["outside the vocabulary"])
    }

    func testMissingTokenizer() {
        assertMoETuneError(try Tokenizer(path: "/nonexistent/tokenizer.model"), contains: ["/nonexistent/tokenizer.model", "not found"])
    }
}
