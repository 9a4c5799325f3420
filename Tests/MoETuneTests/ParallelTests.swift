import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The parallel regions (Layers/Parallel.swift) and the MoE experts run as tasks of one
/// region: the same results, bit for bit, as the experts one after another with split
/// products, also with LoRA dropout (per-worker scratch).
final class ParallelTests: XCTestCase {
    func testRegionsMarkTheirWorkersAndNestSerially() {
        XCTAssertFalse(Parallel.inRegion)
        XCTAssertEqual(Parallel.workerIndex, 0)
        let n = 4
        let seen = UnsafeMutablePointer<Int>.allocate(capacity: n * 3)
        defer { seen.deallocate() }
        seen.initialize(repeating: -1, count: n * 3)
        Parallel.run(n) { i in
            seen[i * 3] = Parallel.inRegion ? 1 : 0
            seen[i * 3 + 1] = Parallel.workerIndex
            // A nested region runs on this worker, keeping its slot.
            var nested = 0
            Parallel.run(3) { _ in if Parallel.workerIndex == i { nested += 1 } }
            seen[i * 3 + 2] = nested
        }
        for i in 0..<n {
            XCTAssertEqual(seen[i * 3], 1, "iteration \(i) runs inside the region")
            XCTAssertEqual(seen[i * 3 + 1], i, "iteration \(i) holds worker slot \(i)")
            XCTAssertEqual(seen[i * 3 + 2], 3, "the nested region ran all 3 iterations serially")
        }
        XCTAssertFalse(Parallel.inRegion)
    }

    func testEveryTaskRunsOnce() {
        let count = 37
        let order = UnsafeMutablePointer<Int32>.allocate(capacity: count)
        let runs = UnsafeMutablePointer<Int>.allocate(capacity: count)
        defer { order.deallocate(); runs.deallocate() }
        for i in 0..<count { order[i] = Int32(count - 1 - i) }
        runs.initialize(repeating: 0, count: count)
        // Each task writes only its own slot.
        Parallel.forEachTask(order, count: count) { t in runs[t] += 1 }
        XCTAssertEqual((0..<count).map { runs[$0] }, Array(repeating: 1, count: count))
    }

    /// Loss and every LoRA gradient of one step with the experts as parallel tasks and
    /// one after another: bit-identical (no tolerance), on every MoE fixture, fp32 and NF4.
    func testExpertTasksMatchSerialExperts() throws {
        // The NF4 runs check the dequantization scratch: one per worker.
        for (name, nf4) in [("mixtral", false), ("olmoe", false), ("qwen2_moe", false), ("granitemoe", false),
                            ("mixtral", true), ("olmoe", true)] {
            let model = try Transformer.load(directory: Fixtures.dir(name),
                                             quantize: nf4 ? QuantizationSpec(doubleQuant: true) : nil)
            let c = model.config
            let (b, t) = (3, 17)
            var rng = SplitMix64(seed: 7)
            let ids = (0..<(b * t)).map { _ in Int32(3 + Int(rng.next() % UInt64(c.vocabSize - 3))) }
            var targets = [Int32](repeating: -1, count: b * t)
            for i in 0..<b { for j in 0..<(t - 1) where j % 3 != 0 { targets[i * t + j] = ids[i * t + j + 1] } }
            let batch = TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: [t, t - 4, t - 9])
            func step(tasks: Bool) throws -> (Double, [Float]) {
                let saved = Parallel.expertTasks
                Parallel.expertTasks = tasks
                defer { Parallel.expertTasks = saved }
                let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: 4, alpha: 8, dropout: 0.1,
                                                                           targets: [.query, .value, .mlp]), seed: 3)
                // B starts at zero; give it values so every gradient is non-zero.
                var r = SplitMix64(seed: 11)
                for a in adapters.all { for i in 0..<(a.outFeatures * a.rank) { a.b[i] = r.nextFloat() * 0.2 - 0.1 } }
                adapters.dropout?.active = true
                adapters.dropout?.reserve(b * t * max(c.hiddenSize, c.intermediateSize, c.expertIntermediateSize, c.qDim))
                let state = ForwardState(config: c, batch: b, seq: t, training: true, loraRank: adapters.maxRank)
                state.scoredOnly = true
                let grads = BackwardState(for: state, config: c)
                adapters.store.zeroGrads()
                let (sum, count) = try model.forward(batch, state: state, adapters: adapters)
                model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
                return (sum, adapters.store.grads.array)
            }
            let (lossTasks, gradTasks) = try step(tasks: true)
            let (lossSerial, gradSerial) = try step(tasks: false)
            XCTAssertEqual(lossTasks, lossSerial, name)
            XCTAssertEqual(gradTasks.count, gradSerial.count, name)
            XCTAssertGreaterThan(gradSerial.map { abs($0) }.max() ?? 0, 0, "\(name): gradients must not all be zero")
            let differing = zip(gradTasks, gradSerial).filter { $0 != $1 }.count
            XCTAssertEqual(differing, 0, "\(name): \(differing) gradient values differ between expert tasks and serial experts")
        }
    }

    /// No backward below the lowest adapted layer: adapters on the upper layers only get the
    /// same gradients, bit for bit, as the same adapters in a set that also adapts every
    /// lower layer (whose B = 0 leaves the forward pass unchanged).
    func testNoBackwardBelowTheLowestAdaptedLayer() throws {
        for name in ["llama", "mixtral"] {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            let c = model.config
            XCTAssertGreaterThan(c.numLayers, 1)
            let (b, t) = (2, 11)
            var rng = SplitMix64(seed: 5)
            let ids = (0..<(b * t)).map { _ in Int32(3 + Int(rng.next() % UInt64(c.vocabSize - 3))) }
            var targets = [Int32](repeating: -1, count: b * t)
            for i in 0..<b { for j in 0..<(t - 1) { targets[i * t + j] = ids[i * t + j + 1] } }
            let batch = TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: [t, t - 3])
            let targetsKinds: Set<ModuleKind> = [.query, .key, .value, .projection, .mlp]
            let all = try AdapterSet(model: model, spec: LoRASpec(rank: 4, alpha: 8, targets: targetsKinds), seed: 1)
            let upper = try AdapterSet(model: model, spec: LoRASpec(rank: 4, alpha: 8, targets: targetsKinds,
                                                                    layers: .last(c.numLayers - 1)), seed: 2)
            XCTAssertEqual(model.lowestTrainedLayer(upper), 1)
            var r = SplitMix64(seed: 9)
            let byModule = Dictionary(uniqueKeysWithValues: all.all.map { ($0.module, $0) })
            for a in upper.all {
                let twin = try XCTUnwrap(byModule[a.module])
                for i in 0..<(a.outFeatures * a.rank) { a.b[i] = r.nextFloat() * 0.2 - 0.1; twin.b[i] = a.b[i] }
                for i in 0..<(a.inFeatures * a.rank) { twin.a[i] = a.a[i] }
            }
            func grads(_ set: AdapterSet) throws -> [String: [Float]] {
                let state = ForwardState(config: c, batch: b, seq: t, training: true, loraRank: set.maxRank)
                let g = BackwardState(for: state, config: c)
                set.store.zeroGrads()
                let (_, count) = try model.forward(batch, state: state, adapters: set)
                model.backward(state: state, adapters: set, grads: g, lossScale: 1 / Float(count))
                var out: [String: [Float]] = [:]
                for a in set.all {
                    out[a.module] = Array(UnsafeBufferPointer(start: a.gradA, count: a.rank * a.inFeatures))
                        + Array(UnsafeBufferPointer(start: a.gradB, count: a.rank * a.outFeatures))
                }
                return out
            }
            let gAll = try grads(all), gUpper = try grads(upper)
            XCTAssertFalse(gUpper.isEmpty)
            for (module, g) in gUpper {
                XCTAssertGreaterThan(g.map { abs($0) }.max() ?? 0, 0, "\(name) \(module): gradient must not be zero")
                XCTAssertEqual(g, gAll[module], "\(name) \(module)")
            }
        }
    }
}
