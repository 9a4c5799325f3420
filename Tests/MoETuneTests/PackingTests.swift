import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Sequence packing: a packed batch (several examples back to back in a row, attention
/// block-diagonal, RoPE positions restarting per example) gives the loss and the LoRA
/// gradients of the same examples run unpacked, to 1e-5 relative, on the committed fixture
/// models of every family (dense, MoE with the auxiliary and z losses and a router LoRA,
/// Mistral's sliding window, QLoRA), with and without prompt masking. The bin packing is
/// deterministic for a seed, and a packed run stopped and resumed is step-exact.
final class PackingTests: XCTestCase {
    /// Examples of lengths 3..23 with random ids; `masked`: the first third of each is
    /// prompt (not counted).
    func examples(vocab: Int, masked: Bool) -> [Example] {
        var rng = SplitMix64(seed: 17)
        return [11, 5, 23, 3, 17, 8, 14].enumerated().map { i, n in
            let tokens = (0..<n).map { _ in Int32(3 + Int(rng.next() % UInt64(vocab - 3))) }
            var counted = [Bool](repeating: true, count: n)
            counted[0] = false
            if masked { for j in 0..<(n / 3) { counted[j] = false } }
            return Example(tokens: tokens, counted: counted, line: i + 1, promptLength: masked ? n / 3 : 1)
        }
    }

    /// (loss sum, counted tokens, aux, z, every adapter gradient) of one forward and backward.
    func run(_ model: Transformer, _ adapters: AdapterSet, _ batch: TokenBatch, count: Int) throws
        -> (sum: Double, count: Int, aux: Double, z: Double, grads: [Float]) {
        let state = ForwardState(config: model.config, batch: batch.batch, seq: batch.seq, training: true, loraRank: adapters.maxRank)
        let grads = BackwardState(for: state, config: model.config)
        adapters.store.zeroGrads()
        let r = try model.forward(batch, state: state, adapters: adapters)
        model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
        return (r.sum, r.count, state.auxLoss, state.zLoss,
                Array(UnsafeBufferPointer(start: adapters.store.grads.pointer, count: adapters.store.count)))
    }

    func assertClose(_ a: [Float], _ b: [Float], rel: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        var diff = 0.0, norm = 0.0, worst = 0.0, scale = 0.0
        for i in a.indices {
            diff += Double(a[i] - b[i]) * Double(a[i] - b[i])
            norm += Double(a[i]) * Double(a[i])
            worst = max(worst, Double(abs(a[i] - b[i])))
            scale = max(scale, Double(abs(a[i])))
        }
        XCTAssertGreaterThan(norm, 0, "\(what): gradients are all zero", file: file, line: line)
        print("packed vs unpacked, \(what): gradient relative L2 error \(diff.squareRoot() / norm.squareRoot()), worst element \(worst / scale) of the largest")
        XCTAssertLessThanOrEqual(diff.squareRoot() / norm.squareRoot(), rel, "\(what): relative L2 error of the gradients", file: file, line: line)
        XCTAssertLessThanOrEqual(worst, rel * scale, "\(what): largest element difference vs the largest gradient", file: file, line: line)
    }

    func checkParity(_ fixture: String, quantize: Bool = false) throws {
        for masked in [false, true] {
            let model = try Transformer.load(directory: Fixtures.dir(fixture), quantize: quantize ? QuantizationSpec(doubleQuant: true) : nil)
            if model.config.isMoE {
                model.moe.auxLossCoef = 0.05
                model.moe.zLossCoef = 0.01
            }
            // Every LoRA target the model has (router and shared expert on MoE models).
            var targets = Set(ModuleKind.allCases)
            if !model.config.isMoE { targets.remove(.router) }
            if !model.layers.contains(where: { $0.sharedExpert != nil }) { targets.remove(.sharedExpert) }
            let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: 2, alpha: 4, targets: targets), seed: 5)
            // B starts at zero; make it non-zero so that A's gradients are too.
            var rng = SplitMix64(seed: 9)
            for a in adapters.all { for i in 0..<(a.rank * a.outFeatures) { a.b[i] = (rng.nextFloat() * 2 - 1) * 0.3 } }
            let exs = examples(vocab: model.config.vocabSize, masked: masked)
            let unpacked = TokenBatch(examples: exs)
            let packed = TokenBatch(packedRows: [[exs[0], exs[1], exs[3]], [exs[2]], [exs[4], exs[5], exs[6]]])
            XCTAssertEqual(packed.countedTokens, unpacked.countedTokens)
            XCTAssertEqual(packed.realTokens, unpacked.realTokens)
            XCTAssertLessThan(packed.computedTokens, unpacked.computedTokens)
            let u = try run(model, adapters, unpacked, count: unpacked.countedTokens)
            let p = try run(model, adapters, packed, count: unpacked.countedTokens)
            let what = "\(fixture)\(quantize ? " (NF4)" : "")\(masked ? " masked" : "")"
            XCTAssertEqual(p.count, u.count, what)
            XCTAssertEqual(p.sum, u.sum, accuracy: 1e-5 * abs(u.sum), "\(what): summed loss")
            print("packed vs unpacked, \(what): loss relative error \(abs(p.sum - u.sum) / abs(u.sum))")
            if model.config.isMoE {
                XCTAssertGreaterThan(u.aux, 0)
                XCTAssertEqual(p.aux, u.aux, accuracy: 1e-5 * u.aux, "\(what): load-balancing loss over real tokens")
                XCTAssertEqual(p.z, u.z, accuracy: 1e-5 * u.z, "\(what): z-loss")
            }
            assertClose(u.grads, p.grads, rel: 1e-5, what)
        }
    }

    func testPackedEqualsUnpackedDense() throws { try checkParity("llama") }
    func testPackedEqualsUnpackedMixtral() throws { try checkParity("mixtral") }
    func testPackedEqualsUnpackedSlidingWindow() throws { try checkParity("mistral-sw") }
    func testPackedEqualsUnpackedQLoRA() throws { try checkParity("llama", quantize: true) }
    func testPackedEqualsUnpackedOtherFamilies() throws {
        for f in ["qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "llama-yarn", "qwen2-sw", "qwen2_moe-sw", "deepseek_v2", "deepseek_v2-yarn", "gpt_oss-clamp"] { try checkParity(f) }
    }

    /// Without positions the attention of a packed row would see the previous example:
    /// the check above must be able to fail. Dropping the positions changes the loss.
    func testParityCheckCanFail() throws {
        let model = try Transformer.load(directory: Fixtures.dir("llama"))
        let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: 2, alpha: 4, targets: [.query]), seed: 5)
        let exs = examples(vocab: model.config.vocabSize, masked: false)
        let packed = TokenBatch(packedRows: [[exs[0], exs[1]]])
        let leaky = TokenBatch(batch: 1, seq: packed.seq, ids: packed.ids, targets: packed.targets, lengths: packed.lengths)
        let a = try run(model, adapters, packed, count: packed.countedTokens)
        let b = try run(model, adapters, leaky, count: packed.countedTokens)
        XCTAssertGreaterThan(abs(a.sum - b.sum), 1e-3 * abs(a.sum))
    }

    /// RoPE is relative, so the parity checks above hold for any consistent offset: check the
    /// positions themselves. Each token of a packed row is rotated by its position within its
    /// example (as the decoder's one-token rotation at that position does), and backward undoes it.
    func testRoPEUsesPositions() {
        let rope = RoPETable(headDim: 8, theta: 10000, maxPositions: 16)
        let positions: [Int32] = [0, 1, 2, 0, 1, 0, 1, 2, 3, 0]
        var rng = SplitMix64(seed: 4)
        let x = (0..<(10 * 2 * 8)).map { _ in rng.nextFloat() * 2 - 1 }
        var packed = x
        positions.withUnsafeBufferPointer { p in
            packed.withUnsafeMutableBufferPointer { rope.forward($0.baseAddress!, batch: 2, seq: 5, heads: 2, positions: p.baseAddress!) }
        }
        for row in 0..<10 {
            var one = Array(x[(row * 16)..<((row + 1) * 16)])
            one.withUnsafeMutableBufferPointer { rope.rotate($0.baseAddress!, position: Int(positions[row]), heads: 2) }
            for i in 0..<16 { XCTAssertEqual(packed[row * 16 + i], one[i], accuracy: 1e-6, "row \(row)") }
        }
        var atRowIndex = Array(x[48..<64])
        atRowIndex.withUnsafeMutableBufferPointer { rope.rotate($0.baseAddress!, position: 3, heads: 2) }
        XCTAssertNotEqual(Array(packed[48..<64]), atRowIndex, "row 3 starts an example: position 0, not 3")
        positions.withUnsafeBufferPointer { p in
            packed.withUnsafeMutableBufferPointer { rope.backward($0.baseAddress!, batch: 2, seq: 5, heads: 2, positions: p.baseAddress!) }
        }
        for i in x.indices { XCTAssertEqual(packed[i], x[i], accuracy: 1e-6) }
    }

    /// A packed row may be longer than max_position_embeddings (256 here) as long as each of its
    /// examples fits; an example that does not is still refused.
    func testPackedRowsLongerThanThePositions() throws {
        let model = try Transformer.load(directory: Fixtures.dir("llama"))
        let ex = Example(tokens: [Int32](repeating: 7, count: 100), counted: [false] + [Bool](repeating: true, count: 99),
                         line: 1, promptLength: 1)
        let packed = TokenBatch(packedRows: [[ex, ex, ex]])
        XCTAssertEqual(packed.seq, 300)
        let state = ForwardState(config: model.config, batch: 1, seq: 300, training: false)
        let r = try model.forward(packed, state: state)
        let single = try model.forward(TokenBatch(examples: [ex]), state: state)
        XCTAssertEqual(r.sum, 3 * single.sum, accuracy: 1e-5 * r.sum)
        let long = Example(tokens: [Int32](repeating: 7, count: 300), counted: [Bool](repeating: true, count: 300), line: 1, promptLength: 0)
        assertMoETuneError(try model.forward(TokenBatch(packedRows: [[long]]), state: state),
                           contains: ["sequence length 300", "max_position_embeddings 256"])
    }

    func testPackedBatchLayout() {
        let e1 = Example(tokens: [5, 6, 7], counted: [false, true, true], line: 1, promptLength: 1)
        let e2 = Example(tokens: [8, 9], counted: [false, true], line: 2, promptLength: 1)
        let e3 = Example(tokens: [10, 11, 12, 13], counted: [false, false, true, true], line: 3, promptLength: 2)
        let b = TokenBatch(packedRows: [[e1, e2], [e3]], pad: 0)
        XCTAssertEqual(b.seq, 5)
        XCTAssertEqual(b.ids, [5, 6, 7, 8, 9, 10, 11, 12, 13, 0])
        // The last token of e1 predicts nothing (not e2's first token).
        XCTAssertEqual(b.targets, [6, 7, -1, 9, -1, -1, 12, 13, -1, -1])
        XCTAssertEqual(b.positions!, [0, 1, 2, 0, 1, 0, 1, 2, 3, 0])
        XCTAssertEqual(b.lengths, [5, 4])
        XCTAssertEqual(b.computedTokens, 10)
        XCTAssertEqual(b.realTokens, 9)
        XCTAssertEqual(b.countedTokens, 5)
    }

    func testFirstFitDecreasing() {
        let plan = PackingPlan(rowTokens: 10, rows: 2)
        // Decreasing: 7, 6, 5, 4, 3, 2, 2 → [7, 3], [6, 4], [5, 2, 2].
        let lengths = [2, 7, 4, 6, 2, 3, 5]
        let rows = plan.packRows(lengths, order: Array(lengths.indices))
        XCTAssertEqual(rows.map { $0.map { lengths[$0] } }, [[7, 3], [6, 4], [5, 2, 2]])
        XCTAssertEqual(rows, [[1, 5], [3, 2], [6, 0, 4]])
    }

    func testPackingIsDeterministicAndComplete() {
        var rng = SplitMix64(seed: 1)
        let lengths = (0..<500).map { _ in 20 + Int(rng.next() % 481) }
        let plan = PackingPlan(rowTokens: 512, rows: 3)
        let a = plan.batches(lengths, seed: 7, epoch: 0)
        XCTAssertEqual(a, plan.batches(lengths, seed: 7, epoch: 0), "same seed and epoch, same plan")
        XCTAssertNotEqual(a, plan.batches(lengths, seed: 7, epoch: 1), "another epoch, another order")
        XCTAssertNotEqual(a, plan.batches(lengths, seed: 8, epoch: 0), "another seed, another order")
        for epoch in 0..<3 {
            let b = plan.batches(lengths, seed: 7, epoch: epoch)
            XCTAssertEqual(b.count, plan.batchCount(lengths), "count the same every epoch")
            XCTAssertEqual(b.flatMap { $0.flatMap { $0 } }.sorted(), Array(lengths.indices), "every example once")
            for batch in b {
                XCTAssertLessThanOrEqual(batch.count, 3)
                for row in batch { XCTAssertLessThanOrEqual(row.reduce(0) { $0 + lengths[$1] }, 512) }
            }
        }
        // First-fit decreasing is within 11/9 OPT + 1 rows; the lower bound is total / capacity.
        let total = lengths.reduce(0, +)
        let rows = plan.packRows(lengths, order: Array(lengths.indices)).count
        XCTAssertLessThanOrEqual(Double(rows), 11.0 / 9.0 * (Double(total) / 512).rounded(.up) + 1)
    }

    func testPackedEvaluationEqualsUnpacked() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let ds = Dataset(path: "x", examples: examples(vocab: model.config.vocabSize, masked: true), truncated: 0)
        let u = try Evaluator.evaluate(model: model, dataset: ds, batchSize: 3)
        let p = try Evaluator.evaluate(model: model, dataset: ds, batchSize: 3, packing: PackingPlan(rowTokens: 32, rows: 2))
        XCTAssertEqual(p.tokens, u.tokens)
        XCTAssertEqual(p.examples, u.examples)
        XCTAssertEqual(p.loss, u.loss, accuracy: 1e-5 * u.loss)
    }

    /// GPT-OSS (forward only: its adapters are refused): attention sinks and the alternating
    /// sliding window 3 / full layers take the packed rows' per-token positions.
    func testPackedEvaluationEqualsUnpackedGptOss() throws {
        let model = try Transformer.load(directory: Fixtures.dir("gpt_oss"))
        for masked in [false, true] {
            let ds = Dataset(path: "x", examples: examples(vocab: model.config.vocabSize, masked: masked), truncated: 0)
            let u = try Evaluator.evaluate(model: model, dataset: ds, batchSize: 3)
            let p = try Evaluator.evaluate(model: model, dataset: ds, batchSize: 3, packing: PackingPlan(rowTokens: 32, rows: 2))
            print("packed vs unpacked eval, gpt_oss\(masked ? " masked" : ""): loss relative error \(abs(p.loss - u.loss) / u.loss)")
            XCTAssertEqual(p.tokens, u.tokens)
            XCTAssertEqual(p.loss, u.loss, accuracy: 1e-5 * u.loss)
        }
    }
}
