import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// GRPO runs on the Mixtral fixture: metrics with TRL's names, a stopped and resumed run equal
/// to the uninterrupted one bit for bit, bad data lines and failing reward programs refused
/// with one line naming the file and line or the reward.
final class GRPORunTests: XCTestCase {
    /// A GRPO prompt file of `n` lines and a config; rewards that vary on a random model's text.
    func setUpRun(_ dir: String, extra: String = "", grpo: String = "", rewards: String? = nil, lines: String? = nil, n: Int = 8) throws -> String {
        var text = ""
        for i in 0..<n { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"answer\": \"\(2 * i + 1)\"}\n" }
        try Data((lines ?? text).utf8).write(to: URL(fileURLWithPath: dir + "/prompts.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: \(dir)/prompts.jsonl
        lora:
          rank: 4
          targets: [query, value, mlp]
        optimizer:
          lr: 1.0e-2
        training:
          method: grpo
          batch_size: 2
          max_seq_len: 48
          eval_every: 0
          out_dir: \(dir)/out
        \(extra)
        grpo:
          group_size: 3
          max_new_tokens: 6
        \(grpo)
          rewards:
        \(rewards ?? "    - {type: regex, pattern: \"[aeiou]\"}\n    - {type: length, max_tokens: 3, penalty: 0.1}\n    - {type: exact, weight: 0.5}")
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    @discardableResult
    func train(_ path: String, overrides: [String] = [], resume: Bool = false, stopAfter: Int? = nil) throws -> TrainSummary {
        let cfg = try TrainConfig.load(path: path, overrides: overrides)
        var events = TrainerEvents()
        var steps = 0
        events.step = { _ in steps += 1 }
        events.shouldStop = { stopAfter.map { steps >= $0 } ?? false }
        return try Trainer(config: cfg, configPath: path).run(resume: resume, events: events)
    }

    func lines(_ dir: String, _ type: String) throws -> [[String: Any]] {
        try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == type }
    }

    /// A run logs TRL's names; a run stopped after step 2 and resumed writes the adapter and
    /// metrics of an uninterrupted one, bit for bit (grad_accum 2, iterations 2, beta > 0,
    /// LoRA dropout, router jitter).
    func testStoppedAndResumedGRPORunEqualsUninterrupted() throws {
        let extra = "  grad_accum: 2\n  max_steps: 4\nmoe:\n  jitter: 0.01", g = "  iterations: 2\n  beta: 0.05\n  epsilon_high: 0.28"
        let a = try makeTempDir(self), b = try makeTempDir(self)
        let ca = try setUpRun(a, extra: extra, grpo: g), cb = try setUpRun(b, extra: extra, grpo: g)
        try train(ca, overrides: ["lora.dropout=0.1"])
        XCTAssertEqual(try train(cb, overrides: ["lora.dropout=0.1"], stopAfter: 1).stoppedAt, 2, "a stop waits for the generation batch's last iteration")
        XCTAssertEqual(try train(cb, overrides: ["lora.dropout=0.1"], resume: true).resumedFrom, 2)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: a + "/out/adapter_model.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: b + "/out/adapter_model.safetensors")))
        let la = try lines(a, "step"), lb = try lines(b, "step")
        XCTAssertEqual(la.map { $0["step"] as! Int }, [1, 2, 3, 4])
        XCTAssertEqual(la.map { $0["loss"] as! Double }, lb.map { $0["loss"] as! Double })
        XCTAssertEqual(la.map { $0["reward"] as! Double }, lb.map { $0["reward"] as! Double })
        for key in ["reward", "reward_std", "rewards/regex/mean", "rewards/regex/std", "rewards/length/mean", "rewards/exact/std",
                    "completions/mean_length", "kl", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", "frac_reward_zero_std"] {
            XCTAssertNotNil(la[0][key], key)
        }
        XCTAssertTrue(la.contains { ($0["reward_std"] as! Double) > 0 }, "the rewards vary, so the steps learn something")
        XCTAssertTrue(la.contains { ($0["loss"] as! Double) != 0 })
    }

    /// Valid prompts are evaluated (greedy) at the start and the end, with sampled completions.
    func testEvaluationLogsRewardsAndCompletions() throws {
        let b = try makeTempDir(self)
        try train(try setUpRun(b, extra: "  max_steps: 1"), overrides: ["data.valid_split=2"])
        let evals = try lines(b, "eval")
        XCTAssertEqual(evals.map { $0["step"] as! Int }, [0, 1])
        XCTAssertEqual(evals[0]["prompts"] as? Int, 2)
        XCTAssertEqual((evals[0]["completions"] as? [[String: Any]])?.count, 2)
        XCTAssertNotNil(evals[0]["rewards/exact/mean"])
    }

    /// max_seq_len shorter than prompt + max_new_tokens: completions end at the cache's length,
    /// and every training row (the last token picked included) fits max_seq_len.
    func testCompletionsCutAtMaxSeqLen() throws {
        let a = try makeTempDir(self)
        try train(try setUpRun(a, extra: "  max_steps: 2", grpo: "  temperature: 1.5"), overrides: ["training.max_seq_len=12"])
        let steps = try lines(a, "step")
        XCTAssertEqual(steps.count, 2)
        XCTAssertGreaterThan(steps[0]["completions/clipped_ratio"] as! Double, 0)
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "no error" } catch { return "\(error)" }
    }

    func testBadDataAndFailingRewardsAreOneLine() throws {
        var m = message { try self.train(try self.setUpRun(try makeTempDir(self), lines: "{\"prompt\": \"hi\", \"answer\": \"1\"}\n{\"question\": \"hi\"}\n")) }
        XCTAssertTrue(m.contains("prompts.jsonl:2") && m.contains("\"prompt\""), m)
        m = message { try self.train(try self.setUpRun(try makeTempDir(self), lines: "{\"prompt\": \"hi\", \"answer\": \"1\"}\n{\"prompt\": \"hi\"}\n")) }
        XCTAssertTrue(m.contains("prompts.jsonl:2") && m.contains("reward \"exact\""), m)
        m = message { try self.train(try self.setUpRun(try makeTempDir(self), lines: "{\"prompt\": \"\(String(repeating: "word ", count: 80))\", \"answer\": \"1\"}\n")) }
        XCTAssertTrue(m.contains("prompts.jsonl:1") && m.contains("max_seq_len"), m)
        m = message { try self.train(try self.setUpRun(try makeTempDir(self), extra: "  max_steps: 1", rewards: "    - {type: command, command: [sh, -c, \"read l; exit 2\"]}")) }
        XCTAssertTrue(m.contains("reward \"command\"") && m.contains("grpo.rewards[0]") && m.contains("prompts.jsonl:") && !m.contains("\n"), m)
        m = message { try self.train(try self.setUpRun(try makeTempDir(self), extra: "  max_steps: 1", rewards: "    - {type: command, command: [sh, -c, \"while read l; do echo oops; done\"]}")) }
        XCTAssertTrue(m.contains("\"oops\"") && m.contains("not a number"), m)
        for l in m.split(separator: "\n") where l.isEmpty { XCTFail("blank line") }
    }
}
