import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// data.valid_split, weighted training files and packed training runs end to end: the split
/// is reproducible and disjoint, draws follow the weights, bad values are one-line errors
/// naming the key, a packed run resumed from a checkpoint is bit-identical to an
/// uninterrupted one, and the padding share is logged.
final class DataMixTests: XCTestCase {
    func parse(_ yaml: String) throws -> TrainConfig { try TrainConfig.parse(yaml, path: "c.yaml") }

    func testConfigKeys() throws {
        let c = try parse("""
        model: m
        data:
          train: [a.jsonl, {path: b.jsonl, weight: 2.5}, {path: c.jsonl}]
          valid_split: 0.05
        training:
          out_dir: o
          packing: true
          max_seq_len: 256
          batch_tokens: 1100
        """)
        XCTAssertEqual(c.data.trainFiles, [.init(path: "a.jsonl"), .init(path: "b.jsonl", weight: 2.5), .init(path: "c.jsonl")])
        XCTAssertEqual(c.data.train, "a.jsonl")
        XCTAssertEqual(c.data.validSplit, .fraction(0.05))
        XCTAssertEqual(c.training.packingPlan, PackingPlan(rowTokens: 256, rows: 4))
        // The resolved YAML reads back to the same config.
        XCTAssertEqual(try parse(c.resolvedYAML()), c)
        let counted = try parse("model: m\ndata:\n  train: t\n  valid_split: 20\ntraining:\n  out_dir: o\n  packing: true\n  batch_size: 3\n")
        XCTAssertEqual(counted.data.validSplit, .count(20))
        XCTAssertEqual(counted.training.packingPlan, PackingPlan(rowTokens: 512, rows: 3), "without batch_tokens: batch_size rows")
        XCTAssertNil(try parse("model: m\ndata:\n  train: t\ntraining:\n  out_dir: o\n").training.packingPlan)
        XCTAssertEqual(try parse(counted.resolvedYAML()), counted)
    }

    func testTrainingKeyErrors() {
        let head = "model: m\ndata:\n  train: t\ntraining:\n  out_dir: o\n"
        assertMoETuneError(try parse(head + "  batch_tokens: 4096\n"), contains: ["c.yaml", "training.batch_tokens", "line 6", "training.packing: true"])
        assertMoETuneError(try parse(head + "  packing: true\n  batch_tokens: 100\n"),
                           contains: ["training.batch_tokens", "line 7", "at least max_seq_len (512)"])
        assertMoETuneError(try parse(head + "  packing: maybe\n"), contains: ["training.packing", "line 6", "true or false"])
    }

    func testValidSplitIsReproducibleAndDisjoint() throws {
        let a = ValidSplitter.split(total: 1000, held: 50, seed: 3)
        XCTAssertEqual(a.valid.count, 50)
        XCTAssertEqual(a.train.count, 950)
        XCTAssertTrue(Set(a.train).isDisjoint(with: a.valid))
        XCTAssertEqual(Set(a.train).union(a.valid), Set(0..<1000))
        XCTAssertEqual(a.train, a.train.sorted(), "file order kept")
        let again = ValidSplitter.split(total: 1000, held: 50, seed: 3)
        XCTAssertEqual(again.valid, a.valid, "same seed, same split")
        XCTAssertNotEqual(ValidSplitter.split(total: 1000, held: 50, seed: 4).valid, a.valid, "another seed, another split")
        // Spread over the file, not a block at one end.
        XCTAssertLessThan(a.valid.first!, 200)
        XCTAssertGreaterThan(a.valid.last!, 800)
        XCTAssertEqual(try ValidSplitter.heldOut(.fraction(0.05), total: 1000, configPath: "c"), 50)
        XCTAssertEqual(try ValidSplitter.heldOut(.fraction(0.05), total: 7, configPath: "c"), 1, "at least one")
        XCTAssertEqual(try ValidSplitter.heldOut(.count(6), total: 7, configPath: "c"), 6)
        assertMoETuneError(try ValidSplitter.heldOut(.count(7), total: 7, configPath: "c.yaml"),
                           contains: ["c.yaml", "data.valid_split", "7 of the 7", "none to train on"])
    }

    func testDrawsFollowWeights() {
        // Files of 100 and 60 examples, weights 2 and 0.5: per epoch each example of the first
        // is drawn twice, a seeded random half of the second once.
        let mix = WeightedMix(files: [(Array(0..<100), 2.0), (Array(100..<160), 0.5)])
        XCTAssertEqual(mix.drawnPerEpoch, 230)
        var draws = [Int](repeating: 0, count: 160)
        let epochs = 40
        for epoch in 0..<epochs {
            let d = mix.draw(seed: 1, epoch: epoch)
            XCTAssertEqual(d.count, 230)
            XCTAssertEqual(d, mix.draw(seed: 1, epoch: epoch), "deterministic")
            for i in d { draws[i] += 1 }
        }
        XCTAssertTrue(draws[0..<100].allSatisfy { $0 == 2 * epochs })
        // Per example of the second file: hypergeometric, mean 20 over 40 epochs, sd ~3.2.
        let second = draws[100..<160]
        XCTAssertEqual(Double(second.reduce(0, +)) / 60, 0.5 * Double(epochs))
        XCTAssertTrue(second.allSatisfy { abs($0 - 20) <= 13 }, "each within 4 sd of its mean: \(second)")
        XCTAssertGreaterThan(Set(second).count, 3, "different halves in different epochs")
        // The draw ratio per example follows the weights (2 : 0.5).
        let ratio = (Double(draws[0..<100].reduce(0, +)) / 100) / (Double(second.reduce(0, +)) / 60)
        XCTAssertEqual(ratio, 4, accuracy: 1e-9)
    }

    /// The trainer's batches follow the weights too, packed and unpacked.
    func testBatchPlanDrawsFollowWeights() {
        var rng = SplitMix64(seed: 2)
        let examples = (0..<90).map { i -> Example in
            let n = 3 + Int(rng.next() % 20)
            return Example(tokens: [Int32](repeating: 5, count: n), counted: [false] + [Bool](repeating: true, count: n - 1),
                           line: i + 1, promptLength: 1)
        }
        let mix = WeightedMix(files: [(Array(0..<30), 3.0), (Array(30..<90), 1.0)])
        for packing in [nil, PackingPlan(rowTokens: 64, rows: 2)] {
            let plan = BatchPlan(examples: examples, mix: mix, batchSize: 4, packing: packing, seed: 5)
            var draws = [Int](repeating: 0, count: 90)
            for epoch in 0..<3 { for batch in plan.batches(epoch: epoch) { for row in batch { for i in row { draws[i] += 1 } } } }
            XCTAssertTrue(draws[0..<30].allSatisfy { $0 == 9 } && draws[30..<90].allSatisfy { $0 == 3 }, "\(String(describing: packing))")
            // microBatch(m) walks the epochs in order.
            let first = plan.count(epoch: 0)
            XCTAssertEqual(plan.microBatch(first).ids, TokenBatch(rows: plan.batches(epoch: 1)[0], of: examples, packed: packing != nil).ids)
        }
    }

    // MARK: Training runs

    func setUp(_ dir: String, packing: Bool = true, extra: String = "") throws -> String {
        var a = "", b = ""
        for i in 0..<30 { a += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        for i in 0..<12 { b += "{\"text\": \"\(String(repeating: "one two three ", count: 1 + i % 4))\"}\n" }
        try Data(a.utf8).write(to: URL(fileURLWithPath: dir + "/a.jsonl"))
        try Data(b.utf8).write(to: URL(fileURLWithPath: dir + "/b.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: [\(dir)/a.jsonl, {path: \(dir)/b.jsonl, weight: 1.5}]
          valid_split: 0.1
        lora:
          rank: 4
          dropout: 0.1
          targets: [query, value, mlp]
        optimizer:
          lr: 1.0e-2
        moe:
          jitter: 0.01
        training:
          packing: \(packing)
          batch_size: 4
          grad_accum: 2
          max_steps: 6
          eval_every: 2
          eval_batches: 2
          max_seq_len: 32
          out_dir: \(dir)/out
        \(extra)
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    @discardableResult
    func train(_ path: String, resume: Bool = false, stopAfter: Int? = nil, log: ((String) -> Void)? = nil) throws -> TrainSummary {
        let cfg = try TrainConfig.load(path: path)
        var events = TrainerEvents()
        var steps = 0
        events.step = { _ in steps += 1 }
        events.log = log ?? { _ in }
        events.shouldStop = { stopAfter.map { steps >= $0 } ?? false }
        return try Trainer(config: cfg, configPath: path).run(resume: resume, events: events)
    }

    func testPackedRunResumesStepExact() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        var lines: [String] = []
        try train(try setUp(a), log: { lines.append($0) })
        XCTAssertTrue(lines.contains { $0.hasPrefix("valid: 4 examples held out of data.train") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("packing: ") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains("b.jsonl") && $0.contains("x 1.5") }, "\(lines)")
        let cb = try setUp(b)
        XCTAssertEqual(try train(cb, stopAfter: 3).stoppedAt, 3)
        XCTAssertEqual(try train(cb, resume: true).steps, 6)
        let bytes = { (d: String) in try Data(contentsOf: URL(fileURLWithPath: d + "/out/adapter_model.safetensors")) }
        XCTAssertEqual(try bytes(a), try bytes(b), "resumed packed run must be bit-identical")
        func steps(_ d: String) throws -> [[String: Any]] {
            try MetricsLog.read(path: d + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }
        }
        XCTAssertEqual(try steps(b).map { $0["loss"] as! Double }, try steps(a).map { $0["loss"] as! Double })
        XCTAssertEqual(try steps(b).map { $0["tokens_computed"] as! Int }, try steps(a).map { $0["tokens_computed"] as! Int })
    }

    func testPaddingShareIsLoggedAndPackingLowersIt() throws {
        func share(packing: Bool) throws -> Double {
            let d = try makeTempDir(self)
            try train(try setUp(d, packing: packing))
            let steps = try MetricsLog.read(path: d + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }
            let computed = steps.map { $0["tokens_computed"] as! Int }.reduce(0, +)
            let real = steps.map { $0["tokens_real"] as! Int }.reduce(0, +)
            for s in steps {
                let c = Double(s["tokens_computed"] as! Int), r = Double(s["tokens_real"] as! Int)
                XCTAssertEqual(s["padding_share"] as! Double, (c - r) / c, accuracy: 1e-12)
                XCTAssertLessThanOrEqual(s["tokens"] as! Int, s["tokens_real"] as! Int)
            }
            let html = try String(contentsOfFile: d + "/out/report.html", encoding: .utf8)
            XCTAssertTrue(html.contains("padding share"))
            return Double(computed - real) / Double(computed)
        }
        let unpacked = try share(packing: false), packed = try share(packing: true)
        XCTAssertGreaterThan(unpacked, 0)
        XCTAssertLessThan(packed, unpacked)
    }

    func testBadDataValues() throws {
        let d = try makeTempDir(self)
        let path = try setUp(d)
        // A count that leaves nothing to train on names the key.
        let yaml = try String(contentsOfFile: path, encoding: .utf8)
        try Data(yaml.replacingOccurrences(of: "valid_split: 0.1", with: "valid_split: 57").utf8).write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try train(path), contains: ["c.yaml", "data.valid_split", "57 of the 42"])
        // A missing file in the list names it.
        try Data(yaml.replacingOccurrences(of: "/b.jsonl", with: "/missing.jsonl").utf8).write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try train(path), contains: ["missing.jsonl", "not found"])
    }
}

extension TokenBatch {
    /// Test helper: a batch of rows of example indices, packed or one example a row.
    init(rows: [[Int]], of examples: [Example], packed: Bool) {
        if packed { self.init(packedRows: rows.map { $0.map { examples[$0] } }) } else { self.init(examples: rows.map { examples[$0[0]] }) }
    }
}
