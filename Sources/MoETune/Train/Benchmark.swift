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

    public init() {}

    public struct Result: Sendable {
        public var tokensPerSecond: Double
        public var stepSeconds: Double
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
        let start = Date()
        for _ in 0..<steps { try step() }
        let dt = Date().timeIntervalSince(start)
        return Result(tokensPerSecond: Double(batch * seq * steps) / dt, stepSeconds: dt / Double(steps),
                      trainable: adapters.store.count, loss: loss, peakRSSMB: peakRSSMegabytes())
    }
}

/// Peak resident set size of this process (getrusage), in MiB.
public func peakRSSMegabytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss / 1024
}
