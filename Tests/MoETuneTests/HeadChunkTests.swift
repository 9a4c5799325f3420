import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// TrainingParityTests, continued: the LM head in row chunks with its backward taken in
/// the forward pass (Model/Head.swift, what training and bench-train run) against peft's
/// fixtures of make_train_fixtures.py and against the whole head: the loss within 1e-5 and
/// every LoRA gradient (the head adapter's included) within 1e-4 relative of peft, as the
/// whole head is held; against the whole head, loss within 1e-6 and gradients within 1e-5
/// relative (max-norm per tensor).
extension TrainingParityTests {

    /// Loss and gradients of one forward + backward on the fixture batch, the head whole
    /// (chunk nil) or in chunks of `chunk` rows.
    func runHead(_ name: String, chunk: Int?, scoredOnly: Bool) throws -> (loss: Double, grads: [[Float]], setup: Setup, chunks: Int) {
        let s = try setup(name, scoredOnly: scoredOnly)
        let b = s.batch
        let state = ForwardState(config: s.model.config, batch: b.batch, seq: b.seq, training: true,
                                 loraRank: s.adapters.maxRank, headChunkRows: chunk)
        state.scoredOnly = scoredOnly
        let grads = BackwardState(for: state, config: s.model.config)
        s.adapters.store.zeroGrads()
        let scale = 1 / Float(b.countedTokens)
        state.headLossScale = scale
        let (sum, count) = try s.model.forward(b, state: state, adapters: s.adapters)
        XCTAssertEqual(count, b.countedTokens)
        if chunk != nil {
            XCTAssertTrue(state.headGradientTaken, "the chunked training head takes its backward in forward")
            XCTAssertEqual(state.logits.count, state.headChunk * s.model.config.vocabSize, "logits hold one chunk")
        }
        s.model.backward(state: state, adapters: s.adapters, grads: grads, lossScale: scale)
        let g = s.adapters.all.flatMap { a in
            [Array(UnsafeBufferPointer(start: a.gradA, count: a.rank * a.inFeatures)),
             Array(UnsafeBufferPointer(start: a.gradB, count: a.rank * a.outFeatures))]
        }
        let chunks = (state.headRows + state.headChunk - 1) / state.headChunk
        let done = Setup(model: s.model, adapters: s.adapters, batch: b, state: state, grads: grads, ref: s.ref)
        return (sum / Double(count), g, done, chunks)
    }

    func checkChunkedHead(_ name: String, scoredOnly: Bool) throws {
        let whole = try runHead(name, chunk: nil, scoredOnly: scoredOnly)
        // 5 rows a chunk: several chunks, the last one short.
        let chunked = try runHead(name, chunk: 5, scoredOnly: scoredOnly)
        XCTAssertGreaterThan(chunked.chunks, 2, "the fixture batch must span several chunks")
        XCTAssertNotNil(chunked.setup.adapters.head, "the fixture adapts the head: its chunked backward is covered")
        let refLoss = Double(try chunked.setup.ref.floatArray("loss")[0])
        XCTAssertLessThanOrEqual(abs(chunked.loss - refLoss) / refLoss, 1e-5, "\(name) chunked loss \(chunked.loss) vs peft \(refLoss)")
        XCTAssertLessThanOrEqual(abs(chunked.loss - whole.loss) / whole.loss, 1e-6, "\(name) chunked loss vs whole")
        let vsPeft = try compareGradients(chunked.setup.adapters, with: Fixtures.dir("train-" + name) + "/grads.safetensors",
                                                 tolerance: 1e-4)
        var worst: Float = 0
        for (a, b) in zip(chunked.grads, whole.grads) {
            let scale = b.map { abs($0) }.max() ?? 0
            let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            let rel = scale > 0 ? diff / scale : diff
            worst = max(worst, rel)
            XCTAssertLessThanOrEqual(rel, 1e-5, "\(name): a chunked-head gradient differs from the whole head's")
        }
        print("\(name) scoredOnly=\(scoredOnly): \(chunked.chunks) chunks, loss \(chunked.loss) vs whole \(whole.loss) vs peft \(refLoss); gradients vs whole \(worst), vs peft \(vsPeft)")
    }

    func testLlamaChunkedHeadMatchesPeftAndWholeHead() throws {
        try checkChunkedHead("llama", scoredOnly: true)
        try checkChunkedHead("llama", scoredOnly: false)
    }

    func testMixtralChunkedHeadMatchesPeftAndWholeHead() throws {
        try checkChunkedHead("mixtral", scoredOnly: true)
        try checkChunkedHead("mixtral", scoredOnly: false)
    }

    /// Forward only (evaluation): chunked and whole give the same loss; a training state
    /// without headLossScale is refused instead of guessing the scale.
    func testChunkedEvaluationAndMissingScale() throws {
        let s = try setup("mixtral", scoredOnly: true)
        let b = s.batch
        func loss(_ chunk: Int?) throws -> Double {
            let st = ForwardState(config: s.model.config, batch: b.batch, seq: b.seq, training: false,
                                  loraRank: s.adapters.maxRank, headChunkRows: chunk)
            st.scoredOnly = true
            let (sum, count) = try s.model.forward(b, state: st, adapters: s.adapters)
            return sum / Double(count)
        }
        let whole = try loss(nil), chunked = try loss(3)
        XCTAssertLessThanOrEqual(abs(chunked - whole) / whole, 1e-6)
        let st = ForwardState(config: s.model.config, batch: b.batch, seq: b.seq, training: true,
                              loraRank: s.adapters.maxRank, headChunkRows: 4)
        XCTAssertThrowsError(try s.model.forward(b, state: st, adapters: s.adapters)) { e in
            XCTAssertTrue("\(e)".contains("headLossScale"), "\(e)")
        }
    }
}
