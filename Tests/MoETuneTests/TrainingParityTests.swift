import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// LoRA training against peft (transformers 4.57, per-expert Mixtral) on the fixtures of
/// scripts/make_train_fixtures.py: every LoRA gradient after one backward pass within
/// 1e-4 relative (max-norm per tensor), and the losses of 10 AdamW and 10 SGD-momentum
/// steps under warm-up + cosine within 1e-4 relative.
final class TrainingParityTests: XCTestCase {
    struct Setup {
        let model: Transformer
        let adapters: AdapterSet
        let batch: TokenBatch
        let state: ForwardState
        let grads: BackwardState
        let ref: SafeTensorsFile
    }

    func setup(_ name: String, scoredOnly: Bool = false) throws -> Setup {
        let model = try Transformer.load(directory: Fixtures.dir(name))
        let dir = Fixtures.dir("train-" + name)
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        let ref = try SafeTensorsFile(path: dir + "/batch.safetensors")
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), labels = try ref.intArray("labels"), mask = try ref.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        for i in 0..<b { for j in 0..<(t - 1) where labels[i * t + j + 1] != -100 { targets[i * t + j] = labels[i * t + j + 1] } }
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let batch = TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths)
        let state = ForwardState(config: model.config, batch: b, seq: t, training: true, loraRank: adapters.maxRank)
        state.scoredOnly = scoredOnly
        return Setup(model: model, adapters: adapters, batch: batch, state: state,
                     grads: BackwardState(for: state, config: model.config), ref: ref)
    }

    /// Worst max-norm relative error of every adapter's gradients against a file of
    /// reference gradients (keys as in the adapter file); each tensor must be within `tolerance`.
    @discardableResult
    func compareGradients(_ adapters: AdapterSet, with path: String, tolerance: Double) throws -> Double {
        let g = try SafeTensorsFile(path: path)
        var worst: Double = 0
        for a in adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let key = "base_model.model.\(a.module).\(suffix).weight"
                let expected = try g.floatArray(key)
                XCTAssertEqual(expected.count, n, key)
                let scale = expected.map { abs($0) }.max() ?? 0
                XCTAssertGreaterThan(scale, 0, "\(key): the reference gradient must not be zero")
                var diff: Float = 0
                for i in 0..<n { diff = Swift.max(diff, abs(ptr[i] - expected[i])) }
                worst = Swift.max(worst, Double(diff / scale))
                XCTAssertLessThanOrEqual(Double(diff / scale), tolerance, key)
            }
        }
        return worst
    }

    func lossAndGrads(_ s: Setup) throws -> Double {
        s.adapters.store.zeroGrads()
        let (sum, count) = try s.model.forward(s.batch, state: s.state, adapters: s.adapters)
        s.model.backward(state: s.state, adapters: s.adapters, grads: s.grads, lossScale: 1 / Float(count))
        return sum / Double(count)
    }

    func checkGradients(_ name: String, scoredOnly: Bool = false) throws {
        let s = try setup(name, scoredOnly: scoredOnly)
        let loss = try lossAndGrads(s)
        if scoredOnly {
            // The head ran on the scored rows alone: fewer than the batch's positions.
            let scored = s.batch.targets.filter { $0 >= 0 }.count
            XCTAssertEqual(s.state.headRows, scored)
            XCTAssertLessThan(scored, s.batch.batch * s.batch.seq, "the fixture must have unscored positions")
        }
        let refLoss = Double(try s.ref.floatArray("loss")[0])
        XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, "\(name) loss \(loss) vs peft \(refLoss)")
        let g = try SafeTensorsFile(path: Fixtures.dir("train-" + name) + "/grads.safetensors")
        XCTAssertEqual(g.tensors.count, 2 * s.adapters.all.count, "every peft LoRA tensor has a moe-tune counterpart")
        let worst = try compareGradients(s.adapters, with: Fixtures.dir("train-" + name) + "/grads.safetensors", tolerance: 1e-4)
        print("\(name): \(s.adapters.all.count) adapters, loss \(loss) vs \(refLoss), worst gradient error \(worst)")
    }

    func testLlamaLoRAGradientsMatchPeft() throws { try checkGradients("llama") }
    func testMixtralLoRAGradientsMatchPeft() throws { try checkGradients("mixtral") }
    // The head and loss over scored positions only (as training runs them): the same
    // loss and gradients within the same tolerances.
    func testLlamaLoRAGradientsMatchPeftScoredOnly() throws { try checkGradients("llama", scoredOnly: true) }
    func testMixtralLoRAGradientsMatchPeftScoredOnly() throws { try checkGradients("mixtral", scoredOnly: true) }

    func checkTrajectory(_ name: String, _ kind: String) throws {
        let s = try setup(name)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("train-" + name) + "/trajectories.json"))) as! [String: Any]
        let ref = json[kind] as! [String: Any]
        let refLoss = (ref["loss"] as! [NSNumber]).map(\.doubleValue)
        let refNorm = (ref["grad_norm"] as! [NSNumber]).map(\.doubleValue)
        let refLR = (ref["lr"] as! [NSNumber]).map(\.doubleValue)
        let optimizer: Optimizer
        let peak: Double, clip: Float?
        if kind == "adamw" {
            optimizer = AdamW(store: s.adapters.store, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01)
            peak = 1e-2; clip = 1.0
        } else {
            optimizer = SGD(store: s.adapters.store, momentum: 0.9, nesterov: false, weightDecay: 0)
            peak = 5e-2; clip = nil
        }
        let schedule = LearningRateSchedule(kind: .cosine, peak: peak, minLR: 0.1 * peak, warmup: 3, total: 10)
        var worst = 0.0
        for step in 1...10 {
            let loss = try lossAndGrads(s)
            let norm = clipGradientNorm(s.adapters.store, maxNorm: clip)
            let lr = schedule.lr(step: step)
            XCTAssertEqual(lr, refLR[step - 1], accuracy: 1e-12, "lr at step \(step)")
            let rel = abs(loss - refLoss[step - 1]) / refLoss[step - 1]
            worst = max(worst, rel)
            XCTAssertLessThanOrEqual(rel, 1e-4, "\(name) \(kind) step \(step): loss \(loss) vs \(refLoss[step - 1])")
            XCTAssertEqual(norm, refNorm[step - 1], accuracy: 1e-3 * refNorm[step - 1], "\(name) \(kind) step \(step): grad norm")
            optimizer.step(lr: Float(lr))
        }
        let final = try s.model.forward(s.batch, state: s.state, adapters: s.adapters)
        let finalLoss = final.sum / Double(final.count), refFinal = (ref["final_loss"] as! NSNumber).doubleValue
        XCTAssertLessThanOrEqual(abs(finalLoss - refFinal) / refFinal, 1e-4, "\(name) \(kind) after 10 steps")
        print("\(name) \(kind): 10 steps, worst loss error \(worst), final \(finalLoss) vs \(refFinal)")
    }

    func testLlamaAdamWTrajectory() throws { try checkTrajectory("llama", "adamw") }
    func testLlamaSGDTrajectory() throws { try checkTrajectory("llama", "sgd") }
    func testMixtralAdamWTrajectory() throws { try checkTrajectory("mixtral", "adamw") }
    func testMixtralSGDTrajectory() throws { try checkTrajectory("mixtral", "sgd") }
}

/// The MoE auxiliary losses against transformers (4.57) on the Mixtral fixture.
extension TrainingParityTests {
    func testLoadBalancingLossAndGradientsMatchTransformers() throws {
        let s = try setup("mixtral")
        s.model.moe.auxLossCoef = 0.02
        s.adapters.store.zeroGrads()
        let (sum, count) = try s.model.forward(s.batch, state: s.state, adapters: s.adapters)
        let refAux = Double(try s.ref.floatArray("aux_loss")[0])
        let refTotal = Double(try s.ref.floatArray("loss_aux")[0])
        let total = sum / Double(count) + 0.02 * s.state.auxLoss
        print("aux loss \(s.state.auxLoss) vs transformers \(refAux); total \(total) vs \(refTotal)")
        XCTAssertLessThanOrEqual(abs(s.state.auxLoss - refAux) / refAux, 1e-5, "load_balancing_loss_func")
        XCTAssertLessThanOrEqual(abs(total - refTotal) / refTotal, 1e-5)
        s.model.backward(state: s.state, adapters: s.adapters, grads: s.grads, lossScale: 1 / Float(count))
        let g = try SafeTensorsFile(path: Fixtures.dir("train-mixtral") + "/grads_aux.safetensors")
        let plain = try SafeTensorsFile(path: Fixtures.dir("train-mixtral") + "/grads.safetensors")
        var worst: Double = 0
        var changed = 0
        for a in s.adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let key = "base_model.model.\(a.module).\(suffix).weight"
                let expected = try g.floatArray(key), without = try plain.floatArray(key)
                let scale = expected.map { abs($0) }.max()!
                var diff: Float = 0, delta: Float = 0
                for i in 0..<n {
                    diff = Swift.max(diff, abs(ptr[i] - expected[i]))
                    delta = Swift.max(delta, abs(expected[i] - without[i]))
                }
                if delta > 1e-3 * scale { changed += 1 }
                worst = Swift.max(worst, Double(diff / scale))
                XCTAssertLessThanOrEqual(Double(diff / scale), 1e-4, key)
            }
        }
        print("with aux loss: worst gradient error \(worst); \(changed) tensors changed by the aux loss")
        XCTAssertGreaterThan(changed, 4, "the aux loss must change the router-side gradients measurably")
    }
}

extension TrainingParityTests {
    /// The router z-loss and its LoRA gradients against the formula written in torch.
    func testRouterZLossAndGradientsMatchTorch() throws {
        let s = try setup("mixtral")
        s.model.moe.zLossCoef = 0.01
        s.adapters.store.zeroGrads()
        let (_, count) = try s.model.forward(s.batch, state: s.state, adapters: s.adapters)
        let refZ = Double(try s.ref.floatArray("z_loss")[0])
        print("z-loss \(s.state.zLoss) vs torch \(refZ)")
        XCTAssertLessThanOrEqual(abs(s.state.zLoss - refZ) / refZ, 1e-5)
        s.model.backward(state: s.state, adapters: s.adapters, grads: s.grads, lossScale: 1 / Float(count))
        let worst = try compareGradients(s.adapters, with: Fixtures.dir("train-mixtral") + "/grads_z.safetensors", tolerance: 1e-4)
        print("with z-loss: worst gradient error \(worst)")
    }
}
