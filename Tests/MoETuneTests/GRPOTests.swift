import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// GRPO (training.method grpo) against TRL 1.16.0 (transformers 5.25.0, peft 0.21.2, torch
/// 2.13.0+cpu; scripts/make_grpo_fixtures.py, Fixtures/grpo-llama and grpo-qwen2_moe): on a fixed
/// generation batch of 2 prompts x 3 completions with fixed rewards and old log-probs and a peft
/// adapter whose B is non-zero, GRPOTrainer._compute_loss's loss within 1e-5 relative, its
/// metrics (kl, clip_ratio/*) within 1e-5 and every LoRA gradient within 1e-4 (max-norm per
/// tensor), for loss grpo, bnpo and dr_grpo, epsilon_high != epsilon, beta > 0 (with a
/// temperature of 0.7); the advantages of TRL's formula for scale_rewards group, batch, none.
/// Then: the built-in rewards, bad data and failing reward programs, a resumed run.
final class GRPOTests: XCTestCase {
    static let families = ["llama", "qwen2_moe"]

    struct Fixture {
        var prompts: [[Int32]]
        var completions: [[Int32]]
        var rewards: [Double]
        var advantages: [String: [Double]]
    }

    func fixture(_ dir: String) throws -> Fixture {
        let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/batch.json"))) as! [String: Any]
        return Fixture(prompts: (o["prompts"] as! [[Int]]).map { $0.map(Int32.init) },
                       completions: (o["completions"] as! [[Int]]).map { $0.map(Int32.init) },
                       rewards: o["rewards"] as! [Double], advantages: o["advantages"] as! [String: [Double]])
    }

    /// Rows [completions][length] of a [B, T] fixture tensor.
    func rows(_ f: SafeTensorsFile, _ key: String, lengths: [Int]) throws -> [[Double]] {
        let flat = try f.floatArray(key), t = flat.count / lengths.count
        return lengths.enumerated().map { i, n in (0..<n).map { Double(flat[i * t + $0]) } }
    }

    /// moe-tune's loss, metrics and gradients of one fixture case; returns (loss error, worst gradient error).
    @discardableResult
    func checkCase(_ family: String, _ name: String) throws -> (Double, Double) {
        let dir = Fixtures.dir("grpo-" + family)
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/meta.json"))) as! [String: Any]
        XCTAssertEqual(meta["trl"] as? String, "1.16.0")
        let m = (meta["cases"] as! [String: Any])[name] as! [String: Any]
        let settings = GRPOLossSettings(loss: TrainConfig.GRPOLossName(rawValue: m["loss"] as! String)!, epsilonLow: m["epsilon"] as! Double,
                                        epsilonHigh: m["epsilon_high"] as! Double, beta: m["beta"] as! Double,
                                        maxCompletionLength: meta["max_completion_length"] as! Int)
        let temperature = m["temperature"] as! Double, fx = try fixture(dir), g = meta["group_size"] as! Int
        let scale = TrainConfig.GRPOScaleRewards(rawValue: m["scale_rewards"] as! String)!
        let advantages = GRPOLoss.advantages(fx.rewards, groupSize: g, scale: scale)
        for (a, b) in zip(advantages, fx.advantages[scale.rawValue]!) { XCTAssertEqual(a, b, accuracy: 1e-5, "\(name) advantages") }
        let f = try SafeTensorsFile(path: dir + "/\(name).safetensors")
        let model = try Transformer.load(directory: Fixtures.dir(family))
        model.moe.auxLossCoef = 0
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        let batch = GRPOBatch(prompts: (0..<fx.completions.count).map { fx.prompts[$0 / g] }, completions: fx.completions)
        let state = ForwardState(config: model.config, batch: batch.rows, seq: batch.tokens.seq, training: true,
                                 loraRank: adapters.maxRank, headChunkRows: nil)
        state.scoredOnly = true
        let step = try GRPOStep(model: model, state: state)
        let lengths = fx.completions.map(\.count)
        var ref: [[Double]]?
        if settings.beta != 0 {
            ref = try step.logps(batch, adapters: nil, temperature: temperature)
            for (a, b) in zip(ref!.joined(), try rows(f, "ref_logps", lengths: lengths).joined()) { XCTAssertEqual(a, b, accuracy: 1e-4, "\(name) ref") }
        }
        adapters.store.zeroGrads()
        let r = try step.run(batch, adapters: adapters, advantages: advantages, old: try rows(f, "old_logps", lengths: lengths), ref: ref,
                             settings: settings, temperature: temperature, microScale: 1, auxScale: 1)
        let refLoss = Double(try f.floatArray("loss")[0]), lossErr = abs(r.loss - refLoss) / abs(refLoss)
        XCTAssertLessThanOrEqual(lossErr, 1e-5, "\(family) \(name) loss \(r.loss) vs TRL \(refLoss)")
        let keys = f.tensors.keys.filter { $0.hasPrefix("metric:") }
        XCTAssertGreaterThanOrEqual(keys.count, 5)
        for key in keys {
            let k = String(key.dropFirst("metric:".count)), expected = Double(try f.floatArray(key)[0])
            guard let ours = r.metrics[k] else { XCTFail("\(family) \(name): no metric \(k)"); continue }
            XCTAssertLessThanOrEqual(abs(ours - expected), 1e-5 * max(1, abs(expected)), "\(family) \(name) \(k) \(ours) vs TRL \(expected)")
        }
        var worst = 0.0
        for a in adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let key = "base_model.model.\(a.module).\(suffix).weight"
                let expected = try f.floatArray(key)
                XCTAssertEqual(expected.count, n, key)
                let s = Double(expected.map { abs($0) }.max() ?? 0)
                var diff = 0.0
                for i in 0..<n { diff = max(diff, Double(abs(ptr[i] - expected[i]))) }
                let err = s > 0 ? diff / s : diff
                worst = max(worst, err)
                XCTAssertLessThanOrEqual(err, 1e-4, "\(family) \(name) \(key)")
            }
        }
        XCTAssertEqual(2 * adapters.all.count, f.tensors.keys.filter { $0.hasPrefix("base_model.") }.count)
        print("\(family) \(name): loss \(r.loss) vs TRL \(refLoss) (rel \(lossErr)), worst LoRA gradient error \(worst)")
        return (lossErr, worst)
    }

    func testGRPOLossMatchesTRL() throws { for f in Self.families { try checkCase(f, "grpo") } }
    func testBNPOLossMatchesTRL() throws { for f in Self.families { try checkCase(f, "bnpo") } }
    func testDrGRPOLossMatchesTRL() throws { for f in Self.families { try checkCase(f, "dr_grpo") } }
    func testEpsilonHighMatchesTRL() throws { for f in Self.families { try checkCase(f, "grpo_eps_high") } }
    func testBetaKLAndTemperatureMatchTRL() throws { for f in Self.families { try checkCase(f, "grpo_beta"); try checkCase(f, "bnpo_beta") } }

    /// The per-token derivative against a central difference of the loss, clipped and unclipped.
    func testTokenDerivativeMatchesFiniteDifference() {
        let s = GRPOLossSettings(loss: .bnpo, epsilonLow: 0.2, epsilonHigh: 0.3, beta: 0.1, maxCompletionLength: 4)
        for (logp, old, a) in [(-1.0, -1.1, 0.7), (-1.0, -1.5, 0.7), (-1.0, -0.5, -0.4), (-2.0, -1.9, -0.4)] {
            let h = 1e-6
            let up = GRPOLoss.token(logp: logp + h, old: old, ref: -1.2, advantage: a, s).loss
            let down = GRPOLoss.token(logp: logp - h, old: old, ref: -1.2, advantage: a, s).loss
            XCTAssertEqual(GRPOLoss.token(logp: logp, old: old, ref: -1.2, advantage: a, s).d, (up - down) / (2 * h), accuracy: 1e-6)
        }
    }
}
