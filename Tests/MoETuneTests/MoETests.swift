import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Routing statistics, capacity and the load-balancing loss on a deliberately skewed
/// router (expert 0 wins nearly every token).
final class MoETests: XCTestCase {
    func skewedModel(_ dir: String) throws -> Transformer {
        try TinyModel.make(dir: dir, moe: true, hidden: 16, inter: 24, layers: 2, experts: 4, topK: 2, vocab: 384,
                           skewedRouter: true, tokenizer: Fixtures.dir("mixtral") + "/tokenizer.model")
        return try Transformer.load(directory: dir)
    }

    func batch(_ b: Int, _ t: Int, seed: UInt64) -> TokenBatch {
        var rng = SplitMix64(seed: seed)
        // Two sequences shorter than t, so padding is present and must not count.
        let seqs: [[Int32]] = (0..<b).map { i in (0..<(t - (i % 2) * 5)).map { _ in Int32(3 + rng.next() % 380) } }
        return TokenBatch(sequences: seqs, counted: seqs.map { Array(repeating: true, count: $0.count) })
    }

    /// Independent count: router logits by plain dot products from the stored inputs,
    /// softmax, top-k, tallied per expert over valid tokens.
    func independentCounts(_ model: Transformer, _ s: ForwardState, _ batch: TokenBatch, layer l: Int) -> [Int] {
        let c = model.config, h = c.hiddenSize, e = c.numExperts
        let x = s.layer(l).ln2.pointer, w = model.layers[l].router!
        var counts = [Int](repeating: 0, count: e)
        for b in 0..<batch.batch {
            for t in 0..<batch.lengths[b] {
                let row = x + (b * batch.seq + t) * h
                let logits = (0..<e).map { j in (0..<h).reduce(Float(0)) { $0 + row[$1] * w.pointer[j * h + $1] } }
                let order = logits.indices.sorted { logits[$0] > logits[$1] }
                for j in order.prefix(c.expertsPerToken) { counts[j] += 1 }
            }
        }
        return counts
    }

    func testFractionsMatchAnIndependentCountAndCapacityDropsTheOverflow() throws {
        let model = try skewedModel(try makeTempDir(self) + "/m")
        let tb = batch(4, 24, seed: 5)
        let s = ForwardState(config: model.config, batch: 4, seq: 24, training: true)
        _ = try model.forward(tb, state: s)
        let st = s.routing!
        let validTokens = tb.lengths.reduce(0, +)
        for l in 0..<2 {
            let counts = independentCounts(model, s, tb, layer: l)
            let expected = counts.map { Double($0) / Double(validTokens * 2) }
            XCTAssertEqual(st.tokens[l], validTokens)
            for (a, b) in zip(st.fractions(layer: l), expected) { XCTAssertEqual(a, b, accuracy: 1e-12) }
            XCTAssertGreaterThan(expected[0], 0.45, "the skewed router sends (nearly) every token to expert 0")
            print("layer \(l) fractions \(expected.map { String(format: "%.3f", $0) }), CV \(st.balance(layer: l).cv)")
        }
        // Capacity factor 1.0: each expert keeps ceil(tokens * k / E) assignments.
        model.moe.capacityFactor = 1.0
        _ = try model.forward(tb, state: s)
        let capacity = Int((Double(validTokens * 2) / 4).rounded(.up))
        for l in 0..<2 {
            let counts = independentCounts(model, s, tb, layer: l)
            let dropped = counts.reduce(0) { $0 + max(0, $1 - capacity) }
            XCTAssertGreaterThan(dropped, 0)
            XCTAssertEqual(s.routing!.dropped[l], dropped, "layer \(l)")
            XCTAssertEqual(s.routing!.droppedFraction(layer: l), Double(dropped) / Double(validTokens * 2), accuracy: 1e-12)
            // Dropped assignments reach no expert: every expert holds at most its capacity.
            for e in 0..<4 { XCTAssertLessThanOrEqual(s.layer(l).routing!.count(of: e), capacity) }
            print("layer \(l): capacity \(capacity), dropped \(dropped) of \(validTokens * 2) (\(String(format: "%.1f", 100 * Double(dropped) / Double(validTokens * 2)))%)")
        }
    }

    func testTopKOverrideIsRangeChecked() throws {
        let model = try skewedModel(try makeTempDir(self) + "/m")
        assertMoETuneError(try model.overrideExpertsPerToken(5), contains: ["top_k 5", "4 experts"])
        try model.overrideExpertsPerToken(1)
        let s = ForwardState(config: model.config, batch: 4, seq: 24, training: false)
        _ = try model.forward(batch(4, 24, seed: 1), state: s)
        XCTAssertEqual(s.routing!.fractions(layer: 0).reduce(0, +), 1, accuracy: 1e-9)
    }

    /// Training the router (in full) with the load-balancing loss lowers the load's
    /// coefficient of variation compared with the same run without it.
    func testAuxLossBalancesTheLoad() throws {
        let dir = try makeTempDir(self)
        _ = try skewedModel(dir + "/m")
        var text = ""
        var rng = SplitMix64(seed: 3)
        let words = ["river", "stone", "cloud", "green", "silver", "orange", "window", "garden", "candle", "rocket"]
        for _ in 0..<64 { text += "{\"text\": \"" + (0..<8).map { _ in words[Int(rng.next() % 10)] }.joined(separator: " ") + "\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/d.jsonl"))
        func run(aux: Double) throws -> (first: Double, last: Double) {
            let yaml = """
            model: \(dir)/m
            data: {train: \(dir)/d.jsonl, valid: \(dir)/d.jsonl}
            lora: {rank: 2, alpha: 4, targets: [query]}
            optimizer: {lr: 0.01, grad_clip: null}
            moe: {aux_loss_coef: \(aux), router: full}
            training: {batch_size: 8, max_steps: 40, eval_every: 0, max_seq_len: 32, seed: 7, out_dir: \(dir)/out-\(aux)}
            """
            try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
            let s = try Trainer(config: TrainConfig.load(path: dir + "/c.yaml"), configPath: dir + "/c.yaml").run()
            return (s.firstRouting!.meanCV, s.lastRouting!.meanCV)
        }
        let without = try run(aux: 0), with = try run(aux: 1.0)
        print("mean load CV: start \(without.first); after 40 steps without aux loss \(without.last), with aux loss (coef 1.0) \(with.last)")
        XCTAssertEqual(without.first, with.first, accuracy: 1e-12, "same start")
        XCTAssertLessThan(with.last, without.last - 0.1, "the aux loss must balance the experts clearly")
    }
}
