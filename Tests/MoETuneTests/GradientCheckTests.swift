import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Hand-written backward against central finite differences of the forward pass, on
/// small random models (independent of the peft fixtures). Tolerance: 2% relative on
/// the entries with the largest gradients (fp32 finite differences are noisy).
final class GradientCheckTests: XCTestCase {
    func check(moe: Bool, dropout: Double = 0, noisy: Bool = false, trainRouters: Bool = false, qwen2MoE: Bool = false) throws {
        let dir = try makeTempDir(self) + "/m"
        try TinyModel.make(dir: dir, moe: moe, layers: qwen2MoE ? 3 : 2, qwen2MoE: qwen2MoE)
        let model = try Transformer.load(directory: dir)
        var spec = LoRASpec(rank: 2, alpha: 4, dropout: dropout, targets: Set(ModuleKind.allCases).subtracting(moe && !trainRouters ? [] : [.router]))
        spec.trainRouters = trainRouters
        if noisy {
            // Jitter and noise are drawn from (seed, step): fixed within this check. The
            // auxiliary losses join the objective too.
            model.moe.jitter = 0.1
            model.moe.noiseStd = 0.5
            model.moe.training = true
            model.moe.step = 3
            model.moe.auxLossCoef = 0.1
            model.moe.zLossCoef = 0.05
            model.moe.learnedNoise = trainRouters
        }
        let adapters = try AdapterSet(model: model, spec: spec, seed: 3)
        // B starts at zero; make it non-zero so A's gradients are too.
        var rng = SplitMix64(seed: 9)
        for a in adapters.all { for i in 0..<(a.rank * a.outFeatures) { a.b[i] = (rng.nextFloat() * 2 - 1) * 0.5 } }
        let seqs: [[Int32]] = [[1, 5, 9, 13, 2, 7, 30, 31, 3, 4], [1, 8, 6, 22, 17]]
        let counted: [[Bool]] = [[false, false, false, true, true, true, true, true, true, true], [false, true, true, true, true]]
        let batch = TokenBatch(sequences: seqs, counted: counted)
        let state = ForwardState(config: model.config, batch: 2, seq: 10, training: true, loraRank: adapters.maxRank, jitter: noisy)
        let grads = BackwardState(for: state, config: model.config)
        if let d = adapters.dropout {
            // The mask is a function of (step, adapter), so finite differences still apply.
            d.reserve(20 * 64)
            d.active = true
            d.step = 5
        }
        func loss() throws -> Double {
            let r = try model.forward(batch, state: state, adapters: adapters)
            return r.sum / Double(r.count) + Double(model.moe.auxLossCoef) * state.auxLoss + Double(model.moe.zLossCoef) * state.zLoss
        }
        // Top-k selection is piecewise constant: a perturbation that flips a routing
        // decision makes the finite difference meaningless, so such samples are skipped.
        func routing() -> [Int32] {
            guard moe else { return [] }
            return (0..<model.config.numLayers).flatMap { l -> [Int32] in
                guard let r = state.layer(l).routing else { return [] }   // a dense layer
                return Array(UnsafeBufferPointer(start: r.topExpert, count: 20 * r.k))
            }
        }
        let (_, count) = try model.forward(batch, state: state, adapters: adapters)
        let baseRouting = routing()
        var skipped = 0
        adapters.store.zeroGrads()
        model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
        let p = adapters.store.params.pointer, g = adapters.store.grads.pointer
        var checked = 0
        for ad in adapters.all {
            // The largest-gradient entry of A and of B of every adapter.
            for (base, gbase, size) in [(ad.a, ad.gradA, ad.rank * ad.inFeatures), (ad.b, ad.gradB, ad.rank * ad.outFeatures)] {
                var best = 0
                for i in 0..<size where abs(gbase[i]) > abs(gbase[best]) { best = i }
                let idx = base - p + best
                let analytic = Double(g[idx])
                let eps: Float = noisy ? 2e-3 : 1e-2
                let orig = p[idx]
                p[idx] = orig + eps; let lp = try loss(); let rp = routing()
                p[idx] = orig - eps; let lm = try loss(); let rm = routing()
                p[idx] = orig
                if rp != baseRouting || rm != baseRouting { skipped += 1; continue }
                let numeric = (lp - lm) / Double(2 * eps)
                let err = abs(numeric - analytic) / max(abs(numeric), 1e-4)
                XCTAssertLessThan(err, 0.02, "\(ad.module) \(base == ad.a ? "A" : "B")[\(best)]: analytic \(analytic) numeric \(numeric)")
                checked += 1
            }
        }
        if let d = adapters.dropout {
            let withDropout = try loss()
            d.active = false
            let without = try loss()
            XCTAssertNotEqual(withDropout, without, accuracy: 1e-4, "dropout must change the loss")
        }
        for (l, r) in (adapters.routers + adapters.noiseWeights).enumerated() {
            guard let r else { continue }
            // The largest-gradient entry of each fully trained router.
            var best = 0
            for i in 0..<(r.experts * r.hidden) where abs(r.grad[i]) > abs(r.grad[best]) { best = i }
            let analytic = Double(r.grad[best]), orig = r.weight[best], eps: Float = noisy ? 2e-3 : 1e-2
            r.weight[best] = orig + eps; let lp = try loss(); let rp = routing()
            r.weight[best] = orig - eps; let lm = try loss(); let rm = routing()
            r.weight[best] = orig
            if rp != baseRouting || rm != baseRouting { skipped += 1; continue }
            let numeric = (lp - lm) / Double(2 * eps)
            XCTAssertLessThan(abs(numeric - analytic) / max(abs(numeric), 1e-4), 0.02, "router \(l): analytic \(analytic) numeric \(numeric)")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 10)
        if trainRouters { XCTAssertNotNil(adapters.noiseWeights.first { $0 != nil } ?? nil, "learned noise weights exist") }
        XCTAssertLessThan(skipped, checked / 4, "too many samples changed the routing")
    }

    func testDenseGradientsMatchFiniteDifferences() throws { try check(moe: false) }
    func testMoEGradientsMatchFiniteDifferences() throws { try check(moe: true) }
    func testGradientsWithAdapterDropout() throws { try check(moe: true, dropout: 0.3) }
    func testGradientsWithJitterNoiseAuxAndZLoss() throws { try check(moe: true, noisy: true) }
    func testGradientsOfFullyTrainedRoutersAndLearnedNoise() throws { try check(moe: true, noisy: true, trainRouters: true) }

    /// A tiny Qwen2-MoE: shared expert with its sigmoid gate (LoRA target shared_expert), top-k
    /// weights not renormalised, a dense layer between MoE layers, q/k/v biases; plain, with
    /// dropout, with jitter/noise/aux/z-loss, and with full routers and learned noise.
    func testQwen2MoEGradientsMatchFiniteDifferences() throws {
        try check(moe: true, qwen2MoE: true)
        try check(moe: true, dropout: 0.3, qwen2MoE: true)
        try check(moe: true, noisy: true, qwen2MoE: true)
        try check(moe: true, noisy: true, trainRouters: true, qwen2MoE: true)
    }
}
