import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// The built-in verifiable rewards (grpo.rewards without code) and the reward program.
final class GRPORewardTests: XCTestCase {
    func testExact() {
        XCTAssertEqual(BuiltinReward.exact(" Paris \n", answer: "Paris", marker: nil, boxed: false), 1)
        XCTAssertEqual(BuiltinReward.exact("The capital is Paris", answer: "Paris", marker: nil, boxed: false), 0)
        XCTAssertEqual(BuiltinReward.exact("so... Answer: Paris", answer: " Paris", marker: "Answer:", boxed: false), 1)
        XCTAssertEqual(BuiltinReward.exact("Answer: 3. Answer: 4", answer: "4", marker: "Answer:", boxed: false), 1)
        XCTAssertEqual(BuiltinReward.exact("we get \\boxed{\\frac{1}{2}} done", answer: "\\frac{1}{2}", marker: nil, boxed: true), 1)
        XCTAssertEqual(BuiltinReward.exact("\\boxed{3} then \\boxed{4}", answer: "4", marker: nil, boxed: true), 1)
        XCTAssertEqual(BuiltinReward.exact("\\boxed{4", answer: "4", marker: nil, boxed: true), 0)
    }

    func testNumeric() {
        XCTAssertEqual(BuiltinReward.lastNumber("2 + 2 = 4."), 4)
        XCTAssertEqual(BuiltinReward.lastNumber("it costs -1,234.5 dollars"), -1234.5)
        XCTAssertEqual(BuiltinReward.lastNumber("1.5e3 or so"), 1500)
        XCTAssertEqual(BuiltinReward.lastNumber("about .25"), 0.25)
        XCTAssertNil(BuiltinReward.lastNumber("no numbers here"))
        XCTAssertEqual(BuiltinReward.numeric("I think 7 + 5 = 12", answer: 12, marker: nil, tolerance: 1e-6), 1)
        XCTAssertEqual(BuiltinReward.numeric("12.0004", answer: 12, marker: nil, tolerance: 1e-3), 1)
        XCTAssertEqual(BuiltinReward.numeric("12 apples, 13 pears", answer: 12, marker: nil, tolerance: 1e-6), 0)
        XCTAssertEqual(BuiltinReward.numeric("#### 12 (not 13)", answer: 12, marker: "####", tolerance: 1e-6), 0)
        XCTAssertEqual(BuiltinReward.numeric("13 ... #### 12", answer: 12, marker: "####", tolerance: 1e-6), 1)
        XCTAssertEqual(BuiltinReward.numeric("nothing", answer: 12, marker: nil, tolerance: 1e-6), 0)
    }

    func testRegexJSONLengthFormat() throws {
        let re = try XCTUnwrap(BoundedRegex("[0-9]+ (apples|pears)"))
        XCTAssertEqual(BuiltinReward.regex("I have 12 pears.", re), 1)
        XCTAssertEqual(BuiltinReward.regex("I have pears.", re), 0)
        XCTAssertEqual(BuiltinReward.json(" {\"a\": 1, \"b\": [2]} ", keys: []), 1)
        XCTAssertEqual(BuiltinReward.json("{\"a\": 1}", keys: ["a", "b"]), 0)
        XCTAssertEqual(BuiltinReward.json("```json\n{\"a\": 1, \"b\": 2}\n```", keys: ["a", "b"]), 1)
        XCTAssertEqual(BuiltinReward.json("{\"a\": 1", keys: []), 0)
        XCTAssertEqual(BuiltinReward.json("[1, 2]", keys: ["a"]), 0)
        XCTAssertEqual(BuiltinReward.length(tokens: 10, maxTokens: 12, penalty: 0.5), 0)
        XCTAssertEqual(BuiltinReward.length(tokens: 15, maxTokens: 12, penalty: 0.5), -1.5)
        let t = "<think>...</think><answer>...</answer>"
        XCTAssertEqual(BuiltinReward.format("<think>2+2</think><answer>4</answer>", template: t), 1)
        XCTAssertEqual(BuiltinReward.format(" <think></think><answer>4</answer>\n", template: t), 1)
        XCTAssertEqual(BuiltinReward.format("<think>x</think> 4", template: t), 0)
        XCTAssertEqual(BuiltinReward.format("<answer>4</answer><think>x</think>", template: t), 0)
        XCTAssertEqual(BuiltinReward.format("<think>a</think><answer>4</answer> trailing", template: t), 0)
    }

    func spec(_ yaml: String) throws -> [TrainConfig.RewardSpec] {
        let dir = try makeTempDir(self)
        try Data("{\"text\": \"x\"}\n".utf8).write(to: URL(fileURLWithPath: dir + "/d.jsonl"))
        let text = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: \(dir)/d.jsonl
        training:
          method: grpo
          out_dir: \(dir)/out
        grpo:
          rewards:
        \(yaml)
        """
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return try TrainConfig.load(path: dir + "/c.yaml").grpo.rewards
    }

    func testRewardConfig() throws {
        let specs = try spec("    - {type: exact, marker: \"Answer:\"}\n    - {type: numeric, weight: 0.5}\n    - {type: numeric, name: close, tolerance: 0.1}")
        XCTAssertEqual(specs.map(\.name), ["exact", "numeric", "close"])
        XCTAssertEqual(specs[1].weight, 0.5)
        XCTAssertThrowsError(try spec("    - {type: regex}")) { XCTAssertTrue("\($0)".contains("grpo.rewards[0].pattern"), "\($0)") }
        XCTAssertThrowsError(try spec("    - {type: exact, pattern: x}")) { XCTAssertTrue("\($0)".contains("grpo.rewards[0].pattern"), "\($0)") }
        XCTAssertThrowsError(try spec("    - {type: format, template: \"<a></a>\"}")) { XCTAssertTrue("\($0)".contains("template"), "\($0)") }
        XCTAssertThrowsError(try spec("    - {type: command}")) { XCTAssertTrue("\($0)".contains("command"), "\($0)") }
    }

    /// Every reward type with non-default keys survives config.yaml (the resolved config a resume checks).
    func testRewardsRoundTripThroughResolvedYAML() throws {
        let dir = try makeTempDir(self)
        try Data("{\"prompt\": \"x\"}\n".utf8).write(to: URL(fileURLWithPath: dir + "/d.jsonl"))
        let text = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: \(dir)/d.jsonl
        training:
          method: grpo
          out_dir: \(dir)/out
        grpo:
          epsilon_high: 0.3
          scale_rewards: batch
          loss: dr_grpo
          rewards:
            - {type: exact, field: solution, marker: "#### ", boxed: true, weight: 2}
            - {type: numeric, tolerance: 0.01, marker: "Answer:"}
            - {type: regex, pattern: '\\d+ "q" \\s*$', name: digits}
            - {type: json, keys: [a, "b c"]}
            - {type: length, max_tokens: 10, penalty: 0.1}
            - {type: format, template: "<think>...</think>\\n<answer>...</answer>"}
            - {type: command, command: [python3, "my score.py", --flag], timeout_s: 5}
        """
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        let c = try TrainConfig.load(path: dir + "/c.yaml")
        XCTAssertEqual(c.grpo.rewards.count, 7)
        try Data(c.resolvedYAML().utf8).write(to: URL(fileURLWithPath: dir + "/r.yaml"))
        let again = try TrainConfig.load(path: dir + "/r.yaml")
        XCTAssertEqual(c, again)
        XCTAssertEqual(again.grpo.rewards[2].pattern, "\\d+ \"q\" \\s*$")
        XCTAssertEqual(again.grpo.rewards[6].command, ["python3", "my score.py", "--flag"])
    }

    func program(_ script: String, timeout: Double = 5) -> RewardProgram {
        RewardProgram(name: "judge", key: "grpo.rewards[0]", configPath: "c.yaml", command: ["sh", "-c", script], timeout: timeout)
    }

    func testRewardProgramAnswersAndFails() throws {
        let ok = program("while read l; do case \"$l\" in *right*) echo 1;; *) echo 0.25;; esac; done")
        XCTAssertEqual(try ok.score("{\"completion\": \"right\"}", line: 1, path: "d.jsonl"), 1)
        XCTAssertEqual(try ok.score("{\"completion\": \"wrong\"}", line: 2, path: "d.jsonl"), 0.25)
        ok.stop()
        let exits = program("read l; echo 1; exit 3")
        XCTAssertEqual(try exits.score("{}", line: 1, path: "d.jsonl"), 1)
        XCTAssertThrowsError(try exits.score("{}", line: 7, path: "d.jsonl")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("reward \"judge\"") && s.contains("d.jsonl:7") && !s.contains("\n"), s)
        }
        XCTAssertThrowsError(try program("read l; echo banana").score("{}", line: 3, path: "d.jsonl")) { e in
            XCTAssertTrue("\(e)".contains("\"banana\"") && "\(e)".contains("d.jsonl:3") && "\(e)".contains("grpo.rewards[0]"), "\(e)")
        }
        let start = Date()
        XCTAssertThrowsError(try program("read l; sleep 30", timeout: 0.5).score("{}", line: 4, path: "d.jsonl")) { e in
            XCTAssertTrue("\(e)".contains("timeout_s 0.5") && "\(e)".contains("d.jsonl:4"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    }

    func testProgramLineCarriesFields() {
        let p = GRPOPrompt(ids: [1], text: "2+2?", fields: ["answer": "4"], json: "{\"prompt\": \"2+2?\", \"answer\": \"4\", \"n\": 3}", line: 1)
        let line = GRPORewardSet.programLine(p, completion: "4")
        XCTAssertEqual(line, "{\"answer\":\"4\",\"completion\":\"4\",\"n\":3,\"prompt\":\"2+2?\"}")
    }
}
