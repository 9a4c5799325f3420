import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// moe-tune's forward pass against transformers on the committed fixtures.
/// Tolerances: logits max |diff| <= 1e-4 (fp32), loss relative error <= 1e-5.
final class ForwardParityTests: XCTestCase {
    func checkFixture(_ name: String) throws {
        let model = try Transformer.load(directory: Fixtures.dir(name))
        let ref = try Fixtures.reference(name)
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids")
        let mask = try ref.intArray("attention_mask")
        // Labels as transformers gets them: the ids, -100 on padding; shifted by one.
        var targets = [Int32](repeating: -1, count: b * t)
        var lengths = [Int](repeating: 0, count: b)
        for i in 0..<b {
            lengths[i] = (0..<t).filter { mask[i * t + $0] == 1 }.count
            for j in 0..<(t - 1) where mask[i * t + j + 1] == 1 { targets[i * t + j] = ids[i * t + j + 1] }
        }
        let batch = TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths)
        let state = ForwardState(config: model.config, batch: b, seq: t, training: false)
        let (sum, count) = try model.forward(batch, state: state)
        let loss = sum / Double(count)

        let refLogits = try ref.floatArray("logits")
        let v = model.config.vocabSize
        XCTAssertEqual(refLogits.count, b * t * v)
        var maxDiff: Float = 0
        for i in 0..<b {
            for j in 0..<t where mask[i * t + j] == 1 {
                for k in 0..<v {
                    let idx = (i * t + j) * v + k
                    maxDiff = max(maxDiff, abs(state.logits[idx] - refLogits[idx]))
                }
            }
        }
        let refLoss = Double(try ref.floatArray("loss")[0])
        let rel = abs(loss - refLoss) / abs(refLoss)
        print("\(name): logits max |diff| \(maxDiff), loss \(loss) vs \(refLoss) (rel \(rel))")
        XCTAssertLessThanOrEqual(maxDiff, 1e-4, "\(name): logits differ from transformers")
        XCTAssertLessThanOrEqual(rel, 1e-5, "\(name): loss differs from transformers")
    }

    func testLlamaShardedTiedMatchesTransformers() throws { try checkFixture("llama") }
    func testMixtralMatchesTransformers() throws { try checkFixture("mixtral") }
    func testMixtralBF16MatchesTransformers() throws { try checkFixture("mixtral-bf16") }

    /// The same batch run as a training-mode state (every layer kept) gives the same loss.
    func testTrainingStateGivesSameLoss() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let ref = try Fixtures.reference("mixtral")
        let ids = try ref.intArray("input_ids")
        let t = ref.shape("input_ids")[1]
        let seq = Array(ids[0..<t])
        let batch = TokenBatch(sequences: [seq], counted: [Array(repeating: true, count: t)])
        let a = try model.forward(batch, state: ForwardState(config: model.config, batch: 1, seq: t, training: false))
        let b = try model.forward(batch, state: ForwardState(config: model.config, batch: 2, seq: t + 3, training: true))
        XCTAssertEqual(a.count, b.count)
        XCTAssertEqual(a.sum, b.sum, accuracy: 1e-6 * abs(a.sum))
    }
}

/// `Evaluator` over eval.jsonl against transformers with the same tokenization rule.
final class EvalParityTests: XCTestCase {
    func checkEval(_ name: String, batchSize: Int) throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir(name))
        let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                                  vocabSize: loaded.model.config.vocabSize, options: DataOptions())
        let r = try Evaluator.evaluate(model: loaded.model, dataset: ds, batchSize: batchSize)
        let ref = try Fixtures.referenceJSON(name)
        let refLoss = (ref["eval_loss"] as! NSNumber).doubleValue
        let refTokens = (ref["eval_tokens"] as! NSNumber).intValue
        print("\(name) eval batch \(batchSize): loss \(r.loss) vs \(refLoss), tokens \(r.tokens) vs \(refTokens)")
        XCTAssertEqual(r.tokens, refTokens)
        XCTAssertLessThanOrEqual(abs(r.loss - refLoss) / refLoss, 1e-5)
    }

    func testLlamaEvalMatchesTransformers() throws {
        try checkEval("llama", batchSize: 1)
        try checkEval("llama", batchSize: 3)
    }

    func testMixtralEvalMatchesTransformers() throws {
        try checkEval("mixtral", batchSize: 1)
        try checkEval("mixtral", batchSize: 4)
    }
}
