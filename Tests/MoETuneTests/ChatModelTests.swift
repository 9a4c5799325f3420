import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// End to end on a model folder with only tokenizer.json (Qwen2.5's, no tokenizer.model) and
/// Qwen2.5's chat template (Fixtures/chat-model, made by scripts/make_chat_model_fixture.py):
/// eval loss equal to transformers' on apply_chat_template ids with assistant-turn masks,
/// training, eval --generate and generate --chat stopping at <|im_end|>.
extension CLITests {
    struct ChatModelReference: Decodable { var loss: Double; var tokens: Int }

    /// The fixture with tokenizer.json unpacked, in a temporary folder.
    func chatModel() throws -> String {
        let dir = try makeTempDir(self) + "/chat-model"
        try FileManager.default.copyItem(atPath: Fixtures.dir("chat-model"), toPath: dir)
        try TokenizerJSONTests.xz(dir + "/tokenizer.json.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.json.xz")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/tokenizer.model"))
        return dir
    }

    func chatModelReference() throws -> ChatModelReference {
        try JSONDecoder().decode(ChatModelReference.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("chat-model/reference.json"))))
    }

    func testChatModelEvalLossEqualsTransformers() throws {
        let dir = try chatModel()
        let ref = try chatModelReference()
        let loaded = try LoadedModel.load(directory: dir)
        XCTAssertTrue(loaded.tokenizer is HFTokenizer)
        let ds = try Dataset.load(path: dir + "/data.jsonl", tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                  options: DataOptions(chat: try ChatFormat.resolve(nil, modelDirectory: dir)))
        let r = try Evaluator.evaluate(model: loaded.model, dataset: ds, batchSize: 2)
        XCTAssertEqual(r.tokens, ref.tokens)
        XCTAssertEqual(r.loss, ref.loss, accuracy: 1e-5 * ref.loss)

        let cli = try run(["eval", "--model", dir, "--data", dir + "/data.jsonl", "--json"])
        XCTAssertEqual(cli.status, 0, cli.err)
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(cli.out.utf8)) as? [String: Any])
        XCTAssertEqual(try XCTUnwrap(obj["loss"] as? Double), ref.loss, accuracy: 1e-5 * ref.loss)
    }

    func testChatModelTrainsAndWritesAnAdapter() throws {
        let dir = try chatModel()
        let work = try makeTempDir(self)
        try Data("""
            model: \(dir)
            data:
              train: \(dir)/data.jsonl
            lora:
              rank: 2
              targets: [query, value]
            training:
              batch_size: 2
              max_steps: 3
              max_seq_len: 64
              out_dir: \(work)/out
            """.utf8).write(to: URL(fileURLWithPath: work + "/c.yaml"))
        let r = try run(["train", "--config", work + "/c.yaml"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/out/adapter_model.safetensors"), r.out + r.err)
        let e = try run(["eval", "--model", dir, "--adapter", work + "/out", "--data", dir + "/data.jsonl", "--json"])
        XCTAssertEqual(e.status, 0, e.err)
    }

    func testChatModelGeneratesAndStopsAtTheEndOfTurn() throws {
        let dir = try chatModel()
        // The fixture's weights answer "Hi" and then <|im_end|> after the assistant header.
        let g = try run(["generate", "--model", dir, "--chat", "--prompt", "Hello!", "--max-new-tokens", "20"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertEqual(g.out, "Hi\n")
        let e = try run(["eval", "--model", dir, "--data", dir + "/data.jsonl", "--generate", "--max-new-tokens", "20"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertTrue(e.out.contains("exact match 75.0% (3 of 4)"), e.out)
    }
}
