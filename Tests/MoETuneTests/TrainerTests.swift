import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The trainer end to end on the small fixtures: it lowers the loss, writes a PEFT
/// adapter that loads back to the same loss, refuses bad settings with one-line errors,
/// and stops on divergence keeping the last good adapter.
final class TrainerTests: XCTestCase {
    func writeData(_ dir: String, lines: Int = 24) throws -> String {
        var text = ""
        for i in 0..<lines {
            text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n"
        }
        let path = dir + "/train.jsonl"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func config(_ dir: String, model: String = "mixtral", extra: String = "") -> String {
        """
        model: \(Fixtures.dir(model))
        data:
          train: \(dir)/train.jsonl
          valid: \(dir)/train.jsonl
        lora:
          rank: 4
          targets: [query, value, mlp]
        optimizer:
          lr: 1.0e-2
        training:
          batch_size: 4
          max_steps: 12
          eval_every: 6
          max_seq_len: 32
          out_dir: \(dir)/out
        \(extra)
        """
    }

    func train(_ yaml: String, dir: String, overrides: [String] = [], overwrite: Bool = false) throws -> TrainSummary {
        let path = dir + "/c.yaml"
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: path))
        let cfg = try TrainConfig.load(path: path, overrides: overrides)
        return try Trainer(config: cfg, configPath: path).run(overwrite: overwrite)
    }

    func testTrainingLowersLossAndWritesLoadableAdapter() throws {
        let dir = try makeTempDir(self)
        _ = try writeData(dir)
        let s = try train(config(dir), dir: dir)
        XCTAssertEqual(s.steps, 12)
        XCTAssertLessThan(s.lastValidLoss!, s.firstValidLoss! - 0.3, "training must lower the loss clearly")
        for f in ["adapter_model.safetensors", "adapter_config.json", "config.yaml", "metrics.jsonl"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/" + f), f)
        }
        let metrics = try MetricsLog.read(path: dir + "/out/metrics.jsonl")
        XCTAssertEqual(metrics.filter { $0["type"] as? String == "step" }.count, 12)
        XCTAssertEqual(metrics.filter { $0["type"] as? String == "eval" }.count, 3)
        // The written adapter evaluates to the loss the trainer reported last.
        let loaded = try LoadedModel.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: dir + "/out", model: loaded.model)
        let ds = try Dataset.load(path: dir + "/train.jsonl", tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize,
                                  options: DataOptions(maxSeqLen: 32))
        let r = try Evaluator.evaluate(model: loaded.model, adapters: adapters, dataset: ds, batchSize: 4)
        XCTAssertEqual(r.loss, s.lastValidLoss!, accuracy: 1e-5 * r.loss)
        // The saved config reads back to the same settings.
        let saved = try TrainConfig.load(path: dir + "/out/config.yaml")
        XCTAssertEqual(saved.lora.targets, [.query, .value, .mlp])
    }

    func testRefusesToOverwriteARun() throws {
        let dir = try makeTempDir(self)
        _ = try writeData(dir)
        _ = try train(config(dir), dir: dir, overrides: ["training.max_steps=1"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["training.max_steps=1"]),
                           contains: ["training.out_dir", "already holds a training run", "--overwrite"])
        XCTAssertNoThrow(try train(config(dir), dir: dir, overrides: ["training.max_steps=1"], overwrite: true))
    }

    func testBadSettingsAreRefused() throws {
        let dir = try makeTempDir(self)
        _ = try writeData(dir)
        assertMoETuneError(try train(config(dir, model: "llama"), dir: dir, overrides: ["lora.targets=[router]"]),
                           contains: ["router", "no router"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["lora.rank=100"]),
                           contains: ["rank 100", "must be between 1 and"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["lora.layers=[7]"]), contains: ["layer 7"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["optimizer.lr=0"]), contains: ["c.yaml", "optimizer.lr"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["lora.dropout=1"]), contains: ["lora.dropout"])
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["data.train=\(dir)/none.jsonl"]), contains: ["none.jsonl", "not found"])
        try Data().write(to: URL(fileURLWithPath: dir + "/empty.jsonl"))
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["data.train=\(dir)/empty.jsonl"]), contains: ["empty.jsonl", "no examples"])
    }

    func testDivergenceStopsAndKeepsLastGoodAdapter() throws {
        let dir = try makeTempDir(self)
        _ = try writeData(dir)
        // A learning rate this large overflows the adapter outputs to infinity: the loss becomes NaN.
        assertMoETuneError(try train(config(dir), dir: dir, overrides: ["optimizer.lr=1e38", "schedule.name=constant", "optimizer.grad_clip=null"]),
                           contains: ["diverged at step", "saved in"])
        let loaded = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: dir + "/out", model: loaded)
        let values = UnsafeBufferPointer(start: adapters.store.params.pointer, count: adapters.store.count)
        XCTAssertTrue(values.allSatisfy(\.isFinite), "the saved adapter holds the last finite parameters")
    }
}
