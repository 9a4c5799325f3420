import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// The training-throughput benchmark of ../shared/peer/peft_bench.py, on moe-tune's side:
/// random tokens, every position a target, LoRA with alpha = 2r and no dropout, AdamW at
/// lr 1e-4, warm-up steps untimed, then timed steps. With instruction data
/// (`dataBatches`), the micro-batches `train` forms from a JSONL file (prompt tokens and
/// padding unscored) in their order, one per step, instead (scripts/peft_bench_data.py
/// runs peft on the same batches).
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
    /// The head in row chunks with its backward in the forward pass (what training does);
    /// false: logits [N, V] whole (RunOptions.headChunks, MOE_TUNE_HEAD_CHUNKS=0 on bench-train, to measure both).
    public var chunkedHead = true
    /// Activation recomputation per decoder layer (training.recompute: layers).
    public var recompute = false

    public init() {}

    public struct Result: Sendable {
        /// Tokens the timed steps computed (rows x row length, padding included) per second.
        public var tokensPerSecond: Double
        /// Scored tokens (predictions counted in the loss) and real (non-padding) tokens of
        /// the timed steps per second; with random tokens every position but the last of a row
        /// is scored.
        public var scoredTokensPerSecond: Double
        public var realTokensPerSecond: Double
        public var stepSeconds: Double
        /// CPU time (user + system, all threads) per timed step: less disturbed than wall
        /// time by other processes on a shared machine.
        public var cpuSecondsPerStep: Double
        /// Counted FLOPs of one step (`countedFlops`).
        public var flopsPerStep: Double
        public var trainable: Int
        public var loss: Double
        /// Loss of the first warm-up step: the base model's (B starts at zero), which the
        /// peer's first step on the same batch must equal.
        public var firstLoss: Double
        public var peakRSSMB: Int
    }

    /// Runs warm-up and timed steps; step i trains on `batches[i % count]` (nil: one batch of
    /// random tokens, every position but a row's last scored).
    public func run(model: Transformer, batches given: [TokenBatch]? = nil) throws -> Result {
        let c = model.config
        try checkSizes(data: given != nil)
        if given == nil, seq > model.rope.maxPositions {
            throw MoETuneError.invalid("bench-train: --seq \(seq) exceeds max_position_embeddings \(model.rope.maxPositions)")
        }
        let batches = given ?? [randomBatch(vocabSize: c.vocabSize)]
        guard !batches.isEmpty else { throw MoETuneError.invalid("bench-train: no batch to train on") }
        let rows = batches.map(\.batch).max()!, longest = batches.map(\.seq).max()!
        let adapters = try AdapterSet(model: model, spec: LoRASpec(rank: rank, alpha: Double(2 * rank), targets: self.targets), seed: seed)
        let state = ForwardState(config: c, batch: rows, seq: longest, training: true, loraRank: adapters.maxRank,
                                 headChunkRows: chunkedHead ? ForwardState.defaultHeadChunkRows(vocab: c.vocabSize) : nil,
                                 recompute: recompute)
        state.scoredOnly = scoredOnly
        let grads = BackwardState(for: state, config: c)
        let opt = AdamW(store: adapters.store)
        var loss = 0.0, firstLoss = Double.nan
        func step(_ i: Int) throws {
            let tb = batches[i % batches.count]
            adapters.store.zeroGrads()
            let scale = 1 / Float(max(tb.countedTokens, 1))
            state.headLossScale = scale
            let (sum, count) = try model.forward(tb, state: state, adapters: adapters)
            model.backward(state: state, adapters: adapters, grads: grads, lossScale: scale)
            opt.step(lr: 1e-4)
            loss = sum / Double(max(count, 1))
            if i == 0 { firstLoss = loss }
        }
        for i in 0..<warmup { try step(i) }
        let cpu0 = processCPUSeconds()
        let start = Date()
        for i in warmup..<(warmup + steps) { try step(i) }
        let dt = Date().timeIntervalSince(start)
        let cpu = processCPUSeconds() - cpu0
        var computed = 0, scored = 0, real = 0, flops = 0.0
        for i in warmup..<(warmup + steps) {
            let tb = batches[i % batches.count]
            computed += tb.computedTokens; scored += tb.countedTokens; real += tb.realTokens
            flops += TrainBenchmark.countedFlops(model: model, batch: tb.batch, seq: tb.seq)
        }
        return Result(tokensPerSecond: Double(computed) / dt, scoredTokensPerSecond: Double(scored) / dt,
                      realTokensPerSecond: Double(real) / dt, stepSeconds: dt / Double(steps),
                      cpuSecondsPerStep: cpu / Double(steps), flopsPerStep: flops / Double(steps),
                      trainable: adapters.store.count, loss: loss, firstLoss: firstLoss, peakRSSMB: peakRSSMegabytes())
    }

    /// `batch` rows of `seq` random tokens (ids 3..<V), every position but the last a target.
    package func randomBatch(vocabSize v: Int) -> TokenBatch {
        var rng = SplitMix64(seed: seed)
        let ids = (0..<(batch * seq)).map { _ in Int32(3 + Int(rng.next() % UInt64(v - 3))) }
        var targets = [Int32](repeating: -1, count: batch * seq)
        for b in 0..<batch { for t in 0..<(seq - 1) { targets[b * seq + t] = ids[b * seq + t + 1] } }
        return TokenBatch(batch: batch, seq: seq, ids: ids, targets: targets, lengths: Array(repeating: seq, count: batch))
    }

    /// The first `count` micro-batches a `train` run with this data file, batch size,
    /// max_seq_len and seed would train on (no packing, one file, prompt tokens unscored
    /// unless `trainOnInputs`): the same tokenizer, prompt/chat encoding (the model folder's
    /// chat template, as `data.chat_template: null`), length grouping and order.
    public static func dataBatches(path: String, loaded: LoadedModel, modelDirectory: String, batchSize: Int, maxSeqLen: Int,
                                   trainOnInputs: Bool = false, seed: UInt64, count: Int) throws -> [TokenBatch] {
        guard (1...TrainConfig.limits.batchSize).contains(batchSize) else {
            throw MoETuneError.invalid("bench-train: --batch must be in 1...\(TrainConfig.limits.batchSize), got \(batchSize)")
        }
        guard (2...TrainConfig.limits.maxSeqLen).contains(maxSeqLen) else {
            throw MoETuneError.invalid("bench-train: --max-seq-len must be in 2...\(TrainConfig.limits.maxSeqLen), got \(maxSeqLen)")
        }
        let chat = try ChatFormat.resolve(nil, modelDirectory: modelDirectory)
        let options = DataOptions(maxSeqLen: maxSeqLen, trainOnInputs: trainOnInputs, chat: chat)
        let ds = try Dataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, options: options)
        guard ds.countedTokens > 0 else { throw MoETuneError.file(path: path, message: "no example has a token to train on") }
        let plan = BatchPlan(examples: ds.examples, mix: WeightedMix(files: [(Array(ds.examples.indices), 1)]),
                             batchSize: batchSize, packing: nil, seed: seed)
        return (0..<count).map { plan.microBatch($0) }
    }

    /// The batches as scripts/peft_bench_data.py reads them, in Hugging Face's convention:
    /// input_ids [B, T] (right-padded), labels[j] = the token at j where predicting it from
    /// 0..<j counts, else -100 (the model shifts them itself), attention_mask 0 on padding.
    public static func peerBatches(_ batches: [TokenBatch], warmup: Int, steps: Int) -> [String: Any] {
        let list: [[String: Any]] = batches.map { tb in
            let t = tb.seq
            let ids = (0..<tb.batch).map { b in (0..<t).map { Int(tb.ids[b * t + $0]) } }
            let labels = (0..<tb.batch).map { b in
                (0..<t).map { j in j == 0 || tb.targets[b * t + j - 1] < 0 ? -100 : Int(tb.targets[b * t + j - 1]) }
            }
            let mask = (0..<tb.batch).map { b in (0..<t).map { $0 < tb.lengths[b] ? 1 : 0 } }
            return ["input_ids": ids, "labels": labels, "attention_mask": mask]
        }
        return ["warmup": warmup, "steps": steps, "batches": list]
    }

    /// Refuses sizes the benchmark cannot run (review: --batch 0 and --seq 0 trapped, --steps 0
    /// failed writing a NaN into the JSON), within train's own limits (TrainConfig.limits).
    /// `data`: the batches come from a file (--seq is not used).
    public func checkSizes(data: Bool) throws {
        let L = TrainConfig.limits
        guard (1...L.batchSize).contains(batch) else { throw MoETuneError.invalid("bench-train: --batch must be in 1...\(L.batchSize), got \(batch)") }
        guard data || (2...L.maxSeqLen).contains(seq) else { throw MoETuneError.invalid("bench-train: --seq must be in 2...\(L.maxSeqLen), got \(seq)") }
        guard (1...L.maxSteps).contains(steps) else { throw MoETuneError.invalid("bench-train: --steps must be in 1...\(L.maxSteps), got \(steps)") }
        guard (0...L.maxSteps).contains(warmup) else { throw MoETuneError.invalid("bench-train: --warmup must be in 0...\(L.maxSteps), got \(warmup)") }
    }

    /// `bench-train --dump-batches`: refuses a path that is or lies inside one of `inputs`
    /// (the model folder or file, the data file), which it used to replace in place, and,
    /// by OutputFolder's rule, an existing file that is not an earlier dump (a JSON object of
    /// exactly warmup, steps and batches), or one in a folder another moe-tune run holds.
    public static func checkDumpPath(_ path: String, inputs: [String]) throws {
        try OutputFolder.checkFile(path, option: "--dump-batches", inputs: inputs, overwrite: true,
                                   what: "not an earlier --dump-batches JSON") { p in
            guard let d = FileManager.default.contents(atPath: p),
                  let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return false }
            return Set(o.keys) == ["warmup", "steps", "batches"]
        }
    }

    /// Writes `peerBatches` as JSON to `path` after `checkDumpPath`, atomically (a temporary
    /// name, fsynced, renamed into place): a failed or killed write leaves nothing under it.
    public static func dumpPeerBatches(_ batches: [TokenBatch], warmup: Int, steps: Int, to path: String, inputs: [String]) throws {
        try checkDumpPath(path, inputs: inputs)
        let bytes = try JSONSerialization.data(withJSONObject: peerBatches(batches, warmup: warmup, steps: steps), options: [.sortedKeys])
        try AtomicFile.write(bytes, to: path)
    }

    /// The FLOPs a LoRA step on a frozen base counts (every row of the batch a position):
    /// each frozen product 2 * rows * in * out forward and the same again for the input
    /// gradient (no weight gradient); experts over rows * k assignments; the head over all
    /// rows; attention's six score-sized products per head and sequence (QK^T, PV forward; dP,
    /// dV, dQ, dK backward), counted over the causal row blocks the kernels compute
    /// (forEachCausalBlock: 2 * D * sum of (i1 - i0) * i1 each; a full T x T square with
    /// MOE_TUNE_ATTENTION_BLOCK=0). Not counted: LoRA's own products (r/in of the base's, about 1-3%),
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
        var computed = 0
        forEachCausalBlock(seq, block: causalBlock) { i0, i1 in computed += (i1 - i0) * i1 }
        let attention = Double(c.numLayers) * Double(batch) * Double(c.numHeads)
            * 6 * 2 * Double(computed) * Double(c.headDim)
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
