import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// `bench-train --data`: the batches are prompt-masked training batches, the file the peer
/// reads holds them in transformers' label convention, and the benchmark's first loss is
/// the base model's loss on the first batch (what peft's first step must print too).
final class BenchDataTests: XCTestCase {
    func testDataBatchesArePromptMaskedDumpedForThePeerAndTrained() throws {
        let dir = Fixtures.dir("mixtral")
        let loaded = try LoadedModel.load(directory: dir)
        let words = ["piano", "apple", "garden", "river", "orange", "candle", "stone", "window", "marble", "rocket"]
        let lines = words.map { w in
            String(decoding: try! JSONSerialization.data(withJSONObject: ["prompt": "Reverse the word \(w).", "completion": " " + String(w.reversed())]), as: UTF8.self)
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bench-data-\(getpid()).jsonl").path
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }

        // 10 examples in batches of 4: 3 a micro-batch epoch; 5 batches run into the next epoch.
        let batches = try TrainBenchmark.dataBatches(path: path, loaded: loaded, modelDirectory: dir, batchSize: 4, maxSeqLen: 64,
                                                     seed: 0, count: 5)
        XCTAssertEqual(batches.count, 5)
        for tb in batches {
            // Prompt tokens, padding and each example's last position carry no prediction.
            XCTAssertGreaterThan(tb.countedTokens, 0)
            XCTAssertLessThan(tb.countedTokens, tb.realTokens - tb.batch, "prompt tokens must be unscored")
        }

        let peer = TrainBenchmark.peerBatches(batches, warmup: 2, steps: 3)
        XCTAssertEqual(peer["warmup"] as? Int, 2)
        XCTAssertEqual(peer["steps"] as? Int, 3)
        let list = try XCTUnwrap(peer["batches"] as? [[String: Any]])
        XCTAssertEqual(list.count, 5)
        for (tb, b) in zip(batches, list) {
            let ids = try XCTUnwrap(b["input_ids"] as? [[Int]]), labels = try XCTUnwrap(b["labels"] as? [[Int]])
            let mask = try XCTUnwrap(b["attention_mask"] as? [[Int]])
            let t = tb.seq
            var scored = 0
            for r in 0..<tb.batch {
                XCTAssertEqual(ids[r], (0..<t).map { Int(tb.ids[r * t + $0]) })
                XCTAssertEqual(mask[r].reduce(0, +), tb.lengths[r])
                XCTAssertEqual(labels[r][0], -100)
                for j in 1..<t {
                    // transformers shifts: label j is predicted at position j - 1.
                    let target = tb.targets[r * t + j - 1]
                    XCTAssertEqual(labels[r][j], target >= 0 ? Int(target) : -100)
                    if target >= 0 { XCTAssertEqual(labels[r][j], ids[r][j]); scored += 1 }
                }
            }
            XCTAssertEqual(scored, tb.countedTokens)
        }

        var bench = TrainBenchmark()
        bench.warmup = 2
        bench.steps = 3
        let r = try bench.run(model: loaded.model, batches: batches)
        let b0 = batches[0]
        let state = ForwardState(config: loaded.model.config, batch: b0.batch, seq: b0.seq, training: false)
        let (sum, count) = try loaded.model.forward(b0, state: state)
        XCTAssertEqual(r.firstLoss, sum / Double(count), accuracy: 1e-6 * abs(sum / Double(count)),
                       "the first step's loss is the base model's (B starts at zero)")
        XCTAssertTrue(r.loss.isFinite)
        // Timed steps 2, 3, 4: the scored share of their computed tokens.
        let timed = batches[2..<5]
        let share = Double(timed.reduce(0) { $0 + $1.countedTokens }) / Double(timed.reduce(0) { $0 + $1.computedTokens })
        XCTAssertEqual(r.scoredTokensPerSecond / r.tokensPerSecond, share, accuracy: 1e-9)
    }
}

extension BenchDataTests {
    /// Review: `--dump-batches` pointed at a model shard or at the data file replaced it (the
    /// fixture's shard became the batches' JSON). Now refused naming the input, before
    /// anything is loaded or written; the write itself is atomic, and an unwritable path is
    /// one line naming it.
    func testDumpBatchesNeverReplacesAnInput() throws {
        let tmp = try makeTempDir(self)
        let model = tmp + "/llama"
        try FileManager.default.copyItem(atPath: Fixtures.dir("llama"), toPath: model)
        let data = tmp + "/data.jsonl"
        try Data(#"{"prompt": "Add 6 and 2.", "completion": " 8"}"#.utf8).write(to: URL(fileURLWithPath: data))
        let shard = model + "/model-00001-of-00008.safetensors"
        let shardBytes = try Data(contentsOf: URL(fileURLWithPath: shard)), dataBytes = try Data(contentsOf: URL(fileURLWithPath: data))
        let loaded = try LoadedModel.load(directory: model)
        let batches = try TrainBenchmark.dataBatches(path: data, loaded: loaded, modelDirectory: model, batchSize: 2, maxSeqLen: 64,
                                                     seed: 0, count: 2)
        for (path, input) in [(shard, model), (model + "/new.json", model), (data, data), (tmp + "/./data.jsonl", data)] {
            assertMoETuneError(try TrainBenchmark.dumpPeerBatches(batches, warmup: 1, steps: 1, to: path, inputs: [model, data]),
                               contains: ["--dump-batches", "input " + input])
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: shard)), shardBytes)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: data)), dataBytes)
        XCTAssertFalse(FileManager.default.fileExists(atPath: model + "/new.json"))
        assertMoETuneError(try TrainBenchmark.dumpPeerBatches(batches, warmup: 1, steps: 1, to: tmp + "/no/such/b.json", inputs: [model, data]),
                           contains: [tmp + "/no/such/b.json"])
        let ok = tmp + "/b.json"
        try TrainBenchmark.dumpPeerBatches(batches, warmup: 1, steps: 1, to: ok, inputs: [model, data])
        let back = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: ok))) as? [String: Any])
        XCTAssertEqual((back["batches"] as? [Any])?.count, 2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.hasPrefix(".") }, [], "no temporary left")
    }

    /// Review: --batch 0 and --seq 0 trapped (stride 0, division by zero, empty range), --steps
    /// 0 ended in a NaN the JSON writer refused, --seq far past the positions trapped on
    /// allocating the random batch. Each is one line naming the flag now.
    func testBenchSizesAreRefusedNotTrapped() throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir("llama"))
        func bench(_ edit: (inout TrainBenchmark) -> Void) -> TrainBenchmark {
            var b = TrainBenchmark()
            b.batch = 1; b.seq = 8; b.steps = 1; b.warmup = 0
            edit(&b)
            return b
        }
        for (b, flag) in [(bench { $0.batch = 0 }, "--batch"), (bench { $0.seq = 0 }, "--seq"), (bench { $0.seq = 1 }, "--seq"),
                          (bench { $0.steps = 0 }, "--steps"), (bench { $0.warmup = -1 }, "--warmup"),
                          (bench { $0.seq = 100_000_000; $0.batch = 100_000 }, "--batch"),
                          (bench { $0.seq = 1 << 20 }, "max_position_embeddings")] {
            assertMoETuneError(try b.run(model: loaded.model), contains: [flag])
        }
        let data = try makeTempDir(self) + "/d.jsonl"
        try Data(#"{"prompt": "Add 6 and 2.", "completion": " 8"}"#.utf8).write(to: URL(fileURLWithPath: data))
        for (batch, maxSeqLen, flag) in [(0, 64, "--batch"), (2, 0, "--max-seq-len")] {
            assertMoETuneError(try TrainBenchmark.dataBatches(path: data, loaded: loaded, modelDirectory: Fixtures.dir("llama"), batchSize: batch,
                                                              maxSeqLen: maxSeqLen, seed: 0, count: 1), contains: [flag])
        }
        let r = try bench { _ in }.run(model: loaded.model)
        XCTAssertTrue(r.loss.isFinite && r.tokensPerSecond > 0)
    }
}
