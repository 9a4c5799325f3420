import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoETraining

/// GRPO prompts given as chat messages: formatted through the model's Jinja chat template with
/// the generation prompt (Qwen2.5's, Fixtures/chat-model), as TRL's GRPOTrainer does.
final class GRPOChatTests: XCTestCase {
    /// The chat-model fixture (its tokenizer.json unpacked) in a temporary folder.
    func chatModel() throws -> String {
        let dir = try copyFixture("chat-model", self)
        try TokenizerJSONTests.xz(dir + "/tokenizer.json.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        return dir
    }

    /// The prompts of Fixtures/dpo-chat/data.jsonl read as GRPO lines tokenize into the prompt
    /// ids TRL 1.16 made for them (tokenized.json: apply_chat_template with
    /// add_generation_prompt for the message lines, the plain encoding for the strings); the
    /// message lines' text is the rendered template, not the messages' contents.
    func testMessagePromptsUseTheChatTemplate() throws {
        let dir = try chatModel()
        let loaded = try LoadedModel.load(directory: dir)
        guard case let .jinja(renderer) = try ChatFormat.resolve(nil, modelDirectory: dir) else { return XCTFail("no Jinja template") }
        let chat = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        let path = Fixtures.dir("dpo-chat/data.jsonl")
        let ds = try GRPODataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, maxSeqLen: 512, chat: chat)
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("dpo-chat/tokenized.json")))) as! [String: Any]
        let lines = ref["lines"] as! [[String: [Int]]]
        XCTAssertEqual(ds.prompts.count, 4)
        for (p, r) in zip(ds.prompts, lines) { XCTAssertEqual(p.ids.map(Int.init), r["prompt_ids"], "line \(p.line)") }
        let start = try XCTUnwrap(loaded.tokenizer.tokenId("<|im_start|>"))
        XCTAssertFalse(ds.prompts[0].ids.contains(start), "a string prompt is not templated")
        XCTAssertEqual(ds.prompts[2].ids.filter { $0 == start }.count, 3, "system, user and the generation prompt's assistant turn")
        XCTAssertTrue(ds.prompts[2].text.hasPrefix("<|im_start|>system\n"), ds.prompts[2].text)
        XCTAssertTrue(ds.prompts[2].text.hasSuffix("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"), ds.prompts[2].text)
        XCTAssertTrue(ds.prompts[3].text.hasPrefix("<|im_start|>system\nYou are terse.<|im_end|>\n"), ds.prompts[3].text)
        // A reward program receives the messages list itself as "prompt".
        let line = try JSONSerialization.jsonObject(with: Data(GRPORewardSet.programLine(ds.prompts[3], completion: "Hi").utf8)) as! [String: Any]
        XCTAssertEqual((line["prompt"] as? [[String: String]])?.last?["content"], "Hello!")
        // Without a Jinja template a messages prompt is refused, naming the line.
        assertMoETuneError(try GRPODataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, maxSeqLen: 512),
                           contains: ["data.jsonl:3", "chat template"])
    }

    /// A GRPO run on message prompts: the trainer takes the model folder's template, samples
    /// from the templated prompt (the eval line's prompt is the rendered chat) and trains.
    func testRunFormatsMessagePromptsWithTheModelsTemplate() throws {
        let model = try chatModel(), dir = try makeTempDir(self)
        var text = ""
        for i in 0..<4 {
            text += "{\"prompt\": [{\"role\": \"system\", \"content\": \"Reply with the number.\"}, {\"role\": \"user\", \"content\": \"\(i) + \(i + 1)\"}], \"answer\": \"\(2 * i + 1)\"}\n"
        }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/p.jsonl"))
        let yaml = """
        model: \(model)
        data:
          train: \(dir)/p.jsonl
          valid: \(dir)/p.jsonl
        lora:
          rank: 2
          targets: [query, value]
        training:
          method: grpo
          batch_size: 2
          max_steps: 2
          max_seq_len: 64
          eval_every: 0
          out_dir: \(dir)/out
        grpo:
          group_size: 2
          max_new_tokens: 3
          log_completions: 4
          rewards:
            - {type: regex, pattern: "[0-9]"}
            - {type: length, max_tokens: 1, penalty: 0.1}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        let summary = try Trainer(config: try TrainConfig.load(path: dir + "/c.yaml"), configPath: dir + "/c.yaml").run()
        XCTAssertEqual(summary.steps, 2)
        let evals = try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == "eval" }
        let shown = try XCTUnwrap(evals.first?["completions"] as? [[String: Any]]).map { $0["prompt"] as? String ?? "" }
        XCTAssertEqual(shown.count, 4)
        for (i, s) in shown.enumerated() {
            XCTAssertEqual(s, "<|im_start|>system\nReply with the number.<|im_end|>\n<|im_start|>user\n\(i) + \(i + 1)<|im_end|>\n<|im_start|>assistant\n")
        }
    }
}
