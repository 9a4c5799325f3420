import Foundation

/// The training-throughput benchmark of ../shared/peer/peft_bench.py, on moe-tune's side:
/// random tokens, every position a target, LoRA with alpha = 2r and no dropout, AdamW at
/// lr 1e-4, warm-up steps untimed, then timed steps.
public struct TrainBenchmark {
    public var batch = 4
    public var seq = 256
    public var rank = 8
    public var targets: Set<ModuleKind> = [.query, .key, .value, .projection]
    public var steps = 6
    public var warmup = 2
    public var seed: UInt64 = 0
    /// Head and loss over scored positions only (what training does); false: every row.
    public var scoredOnly = true

    public init() {}

    public struct Result: Sendable {
        public var tokensPerSecond: Double
        public var stepSeconds: Double
        /// CPU time (user + system, all threads) per timed step: less disturbed than wall
        /// time by other processes on a shared machine.
        public var cpuSecondsPerStep: Double
        /// Counted FLOPs of one step (`countedFlops`).
        public var flopsPerStep: Double
        public var trainable: Int
        public var loss: Double
        public var peakRSSMB: Int
    }

    public func run(model: Transformer) throws -> Result {
        let c = model.config
        var rng = SplitMix64(seed: seed)
        let ids = (0..<(batch * seq)).map { _ in Int32(3 + Int(rng.next() % UInt64(c.vocabSize - 3))) }
        var targets = [Int32](repeating: -1, count: batch * seq)
        for b in 0..<batch { for t in 0..<(seq - 1) { targets[b * seq + t] = ids[b * seq + t + 1] } }
        let tokenBatch = TokenBatch(batch: batch, seq: seq, ids: ids, targets: targets, lengths: Array(repeating: seq, count: batch))
        let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: rank, alpha: Double(2 * rank), targets: self.targets), seed: seed)
        let state = ForwardState(config: c, batch: batch, seq: seq, training: true, loraRank: adapters.maxRank)
        state.scoredOnly = scoredOnly
        let grads = BackwardState(for: state, config: c)
        let opt = AdamW(store: adapters.store)
        var loss = 0.0
        func step() throws {
            adapters.store.zeroGrads()
            let (sum, count) = try model.forward(tokenBatch, state: state, adapters: adapters)
            model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1 / Float(count))
            opt.step(lr: 1e-4)
            loss = sum / Double(count)
        }
        for _ in 0..<warmup { try step() }
        let cpu0 = processCPUSeconds()
        let start = Date()
        for _ in 0..<steps { try step() }
        let dt = Date().timeIntervalSince(start)
        let cpu = processCPUSeconds() - cpu0
        return Result(tokensPerSecond: Double(batch * seq * steps) / dt, stepSeconds: dt / Double(steps),
                      cpuSecondsPerStep: cpu / Double(steps),
                      flopsPerStep: TrainBenchmark.countedFlops(model: model, batch: batch, seq: seq),
                      trainable: adapters.store.count, loss: loss, peakRSSMB: peakRSSMegabytes())
    }

    /// The FLOPs a LoRA step on a frozen base counts (every row of the batch a position):
    /// each frozen product 2 * rows * in * out forward and the same again for the input
    /// gradient (no weight gradient); experts over rows * k assignments; the head over all
    /// rows; attention's four T x T products per head and sequence (QK^T, PV forward; dP,
    /// dV, dQ, dK backward), counted as full squares as the kernels compute them (2 * T * T * D
    /// each). Not counted: LoRA's own products (r/in of the base's, about 1-3%),
    /// recomputation (o_proj and P in backward), element-wise work.
    public static func countedFlops(model: Transformer, batch: Int, seq: Int) -> Double {
        let c = model.config
        let rows = Double(batch * seq)
        func mm(_ w: Matrix) -> Double { Double(w.rows * w.cols) }
        func ffn(_ f: FeedForwardWeights) -> Double { mm(f.gate) + mm(f.up) + mm(f.down) }
        var perRow = mm(model.lmHead)
        for w in model.layers {
            perRow += mm(w.q) + mm(w.k) + mm(w.v) + mm(w.o)
            if let m = w.mlp { perRow += ffn(m) }
            if let r = w.router { perRow += mm(r) }
            if let e = w.experts.first { perRow += Double(c.expertsPerToken) * ffn(e) }
            if let s = w.sharedExpert { perRow += ffn(s) }
            if let g = w.sharedExpertGate { perRow += mm(g) }
        }
        let linear = 2 * 2 * rows * perRow
        let attention = Double(c.numLayers) * Double(batch) * Double(c.numHeads)
            * 6 * 2 * Double(seq) * Double(seq) * Double(c.headDim)
        return linear + attention
    }
}

/// CPU time (user + system) of this process so far, all threads, in seconds.
public func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func sec(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return sec(usage.ru_utime) + sec(usage.ru_stime)
}

/// The machine's large-product rate through moe-tune's BLAS entry point:
/// C [n, n] = A [n, n] B [n, n]^T, best of `repeats`, in GFLOP/s.
public func largeSgemmGFLOPS(size n: Int = 2048, repeats: Int = 4) -> Double {
    let a = FloatBuffer(count: n * n), b = FloatBuffer(count: n * n), c = FloatBuffer(count: n * n)
    for i in 0..<(n * n) { a[i] = Float(i % 7) * 0.01; b[i] = Float(i % 5) * 0.01 }
    var best = Double.infinity
    for _ in 0..<(repeats + 1) {
        let t0 = Date()
        BLAS.gemm(.none, .transpose, m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
        best = min(best, Date().timeIntervalSince(t0))
    }
    return 2 * Double(n) * Double(n) * Double(n) / best / 1e9
}

/// Peak resident set size of this process (getrusage), in MiB.
public func peakRSSMegabytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss / 1024
}
