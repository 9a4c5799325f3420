import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// Inference with a KV cache over several sequences at once. Each call runs a set of rows —
/// token t of sequence slot s at position p — through every layer as one batch: a prompt's
/// prefill is many rows of one slot (the training forward pass's GEMMs), a decoding step of
/// continuous batching one row per active slot (each weight read once for all of them).
/// Every row attends over the keys and values of its own slot's earlier positions, which stay
/// in that slot's cache. Walks each layer through the same description and sublayer functions
/// as the batched forward pass (Model/DecoderLayer.swift), with adapters applied (LoRA, fully
/// trained routers). Allocates everything up front; a call allocates nothing.
public final class Decoder {
    public let model: Transformer
    public let adapters: AdapterSet?
    /// Positions per slot (the cache's length).
    public let maxLength: Int
    /// Sequences the cache holds.
    public let slots: Int
    /// Rows one call runs at most; a longer prompt is fed in chunks of this many.
    public let maxRows: Int
    /// How the products read the weights (`.exact`: as training does).
    public let products: ProductPath

    private let c: ModelConfig
    private let state: DecoderState
    /// The LM head the products read (the GGUF's blocks on the fast path).
    private let lmHead: Matrix
    /// Tokens in each slot's cache, and placeRows' count of them with a call's rows.
    private var lengths: [Int]
    private var pending: [Int]

    /// `slots` sequences of up to `maxLength` positions; calls of up to `maxRows` rows
    /// (default: a prefill chunk of `prefillRows`, at most maxLength).
    public init(model: Transformer, adapters: AdapterSet?, maxLength: Int, slots: Int = 1, maxRows: Int? = nil,
                products: ProductPath = .exact) {
        self.model = model
        self.adapters = adapters
        c = model.config
        self.maxLength = max(1, min(maxLength, model.rope.maxPositions))
        self.slots = max(1, slots)
        self.maxRows = max(self.slots, min(maxRows ?? Decoder.prefillRows(model.config), self.maxLength * self.slots))
        self.products = products
        lengths = Array(repeating: 0, count: self.slots)
        pending = lengths
        // A head the file stores in blocks is read in them; if it cannot be read now, the fp32 copy serves.
        lmHead = products == .fast ? ((try? model.headForDecoding()) ?? model.lmHead) : model.lmHead
        state = DecoderState(config: c, rows: self.maxRows, slots: self.slots, maxLength: self.maxLength,
                             loraRank: adapters?.maxRank ?? 0, logitRows: self.slots)
    }

    /// Rows of a prefill chunk: as many as keep the per-row activations (attention, the
    /// feed-forward and expert scratch) under 256 MiB, at most 2048. Each chunk reads every
    /// weight once (a compressed one widened to fp32 chunk by chunk), so longer chunks
    /// spend less of a prompt on reading weights.
    public static func prefillRows(_ c: ModelConfig) -> Int {
        let k = max(1, c.expertsPerToken)
        let experts = c.isMoE ? k * (2 * c.hiddenSize + 3 * c.expertIntermediateSize) + 6 * c.numExperts : 0
        let shared = 3 * c.sharedExpertIntermediateSize + c.hiddenSize
        let perRow = 4 * (4 * c.hiddenSize + 4 * c.qDim + 2 * c.kvDim + 3 * c.feedForwardScratch(tokens: 1)
            + 3 * k * 64 + experts + shared + (c.mla.map { _ in 2 * c.qDim } ?? 0))
        return max(64, min(2048, (256 << 20) / max(perRow, 1)))
    }

    /// Logits [V] of the last row of the latest call for slot 0 (and rows 1... for a batched step).
    public var logits: FloatBuffer { state.logits }

    /// Tokens held for slot 0 (the single-sequence API).
    public var length: Int { lengths[0] }
    /// Tokens held for `slot`.
    public func length(of slot: Int) -> Int { lengths[slot] }

    /// Forgets every slot's tokens.
    public func reset() { for s in 0..<slots { lengths[s] = 0 } }
    /// Forgets one slot's tokens (a finished sequence makes room for the next).
    public func reset(slot: Int) { lengths[slot] = 0 }

    /// Makes slot `to` hold the first `count` positions of slot `from` (a prompt prefix
    /// several sequences share, computed once): every layer's keys and values copied, `to`'s
    /// own tokens forgotten. `to == from` keeps the first `count` positions of `from`.
    public func copyPrefix(from: Int, to: Int, count: Int) throws {
        guard (0..<slots).contains(from), (0..<slots).contains(to) else {
            throw MoETuneError.invalid("slots \(from) and \(to) are not both within 0..<\(slots)")
        }
        guard (0...lengths[from]).contains(count) else {
            throw MoETuneError.invalid("slot \(from) holds \(lengths[from]) positions, not \(count)")
        }
        if from != to { state.copy(from: from, to: to, positions: count) }
        lengths[to] = count
    }

    /// Feeds one token to slot 0 at position `length` and returns the logits of the next one [V].
    @discardableResult
    public func step(_ token: Int32) throws -> UnsafeMutablePointer<Float> {
        state.tokens[0] = token
        state.slotOf[0] = 0
        state.outRows[0] = 0
        try run(rows: 1, outputs: 1)
        return state.logits.pointer
    }

    /// Feeds `tokens` to `slot` (a prompt: in chunks of maxRows) and returns the logits of the
    /// token after the last one [V].
    @discardableResult
    public func prefill(_ tokens: [Int32], slot: Int = 0) throws -> UnsafeMutablePointer<Float> {
        guard !tokens.isEmpty else { throw MoETuneError.invalid("the prompt is empty") }
        guard (0..<slots).contains(slot) else { throw MoETuneError.invalid("slot \(slot) is outside 0..<\(slots)") }
        guard lengths[slot] + tokens.count <= maxLength else {
            throw MoETuneError.invalid("the prompt has \(tokens.count) tokens; \(maxLength - lengths[slot]) fit in the sequence")
        }
        var i = 0
        while i < tokens.count {
            let n = min(maxRows, tokens.count - i)
            for r in 0..<n { state.tokens[r] = tokens[i + r]; state.slotOf[r] = Int32(slot) }
            i += n
            state.outRows[0] = Int32(n - 1)
            try run(rows: n, outputs: i == tokens.count ? 1 : 0)
        }
        return state.logits.pointer
    }

    /// Feeds several prompts at once, prompt i to slot slots[i] (distinct slots): their rows
    /// share calls of up to maxRows rows, so each weight is read once per call for all of
    /// them. Returns logits [prompts.count, V], row i the next token's after prompt i. Every
    /// prompt is checked before any is fed: a refused batch leaves every slot as it was.
    @discardableResult
    public func prefill(batch prompts: [[Int32]], slots promptSlots: [Int]) throws -> UnsafeMutablePointer<Float> {
        try checkBatch(prompts, slots: promptSlots)
        var rows = 0, outputs = 0, done = 0
        for (p, tokens) in prompts.enumerated() {
            for (t, token) in tokens.enumerated() {
                state.tokens[rows] = token
                state.slotOf[rows] = Int32(promptSlots[p])
                if t == tokens.count - 1 { state.outRows[outputs] = Int32(rows); outputs += 1 }
                rows += 1
                if rows == maxRows {
                    try run(rows: rows, outputs: outputs, logitRow: done)
                    done += outputs; rows = 0; outputs = 0
                }
            }
        }
        if rows > 0 { try run(rows: rows, outputs: outputs, logitRow: done) }
        return state.logits.pointer
    }

    /// A batch of prompts fits: as many as there are slots, each slot once, none empty, each
    /// within its slot's room, every token in the vocabulary.
    private func checkBatch(_ prompts: [[Int32]], slots promptSlots: [Int]) throws {
        guard prompts.count == promptSlots.count, prompts.count <= slots else {
            throw MoETuneError.invalid("a batched prefill takes 1...\(slots) prompts, one slot each; got \(prompts.count)")
        }
        guard Set(promptSlots).count == promptSlots.count else { throw MoETuneError.invalid("a slot appears twice in a batched prefill") }
        for (tokens, slot) in zip(prompts, promptSlots) {
            guard !tokens.isEmpty else { throw MoETuneError.invalid("the prompt is empty") }
            guard (0..<slots).contains(slot) else { throw MoETuneError.invalid("slot \(slot) is outside 0..<\(slots)") }
            guard lengths[slot] + tokens.count <= maxLength else {
                throw MoETuneError.invalid("the prompt has \(tokens.count) tokens; \(maxLength - lengths[slot]) fit in the sequence")
            }
            if let bad = tokens.first(where: { $0 < 0 || Int($0) >= c.vocabSize }) {
                throw MoETuneError.invalid("token id \(bad) is outside the model's vocabulary of \(c.vocabSize)")
            }
        }
    }

    /// One decoding step of several sequences: token tokens[i] goes to slot slots[i] (each
    /// slot at most once); returns logits [count, V], row i for sequence i.
    @discardableResult
    public func step(tokens: UnsafeBufferPointer<Int32>, slots rowSlots: UnsafeBufferPointer<Int32>) throws
        -> UnsafeMutablePointer<Float> {
        let n = tokens.count
        guard n == rowSlots.count, n >= 1, n <= slots else {
            throw MoETuneError.invalid("a decoding step takes 1...\(slots) tokens, one per slot; got \(n)")
        }
        for i in 0..<n { state.tokens[i] = tokens[i]; state.slotOf[i] = rowSlots[i]; state.outRows[i] = Int32(i) }
        try run(rows: n, outputs: n)
        return state.logits.pointer
    }

    /// Runs rows 0..<n of state.tokens / state.slotOf at their slots' next positions; the
    /// logits of rows state.outRows[0..<outputs] go to logits rows logitRow..<logitRow+outputs.
    private func run(rows n: Int, outputs: Int, logitRow: Int = 0) throws {
        try placeRows(n)
        let h = c.hiddenSize, x = state.x.pointer
        for i in 0..<n { embed(row: i, token: state.tokens[i], into: x + i * h) }
        var o = model.moe
        o.training = false
        for l in 0..<c.numLayers { layer(l, rows: n, options: o) }
        head(outputs: outputs, logitRow: logitRow)
    }

    /// Checks every row, then gives each its slot's next position; the slots' lengths move
    /// on only when all rows fit (a refused call leaves every slot as it was).
    private func placeRows(_ n: Int) throws {
        for i in 0..<n {
            let token = state.tokens[i], s = Int(state.slotOf[i])
            guard (0..<slots).contains(s) else { throw MoETuneError.invalid("slot \(s) is outside 0..<\(slots)") }
            guard token >= 0, Int(token) < c.vocabSize else {
                throw MoETuneError.invalid("token id \(token) is outside the model's vocabulary of \(c.vocabSize)")
            }
        }
        // Each slot's rows of this call must fit (pending: kept, so a call allocates nothing).
        for i in 0..<n { pending[Int(state.slotOf[i])] = lengths[Int(state.slotOf[i])] }
        for i in 0..<n {
            let s = Int(state.slotOf[i])
            pending[s] += 1
            guard pending[s] <= maxLength else {
                throw MoETuneError.invalid("the sequence reached the maximum length \(maxLength)")
            }
        }
        for i in 0..<n {
            let s = Int(state.slotOf[i])
            state.positions[i] = Int32(lengths[s])
            lengths[s] += 1
        }
    }

    private func embed(row: Int, token: Int32, into dst: UnsafeMutablePointer<Float>) {
        let h = c.hiddenSize
        dst.update(from: model.embed.pointer + Int(token) * h, count: h)
        if c.embeddingMultiplier != 1 { scaleInPlace(dst, count: h, by: c.embeddingMultiplier) }
    }

    /// One decoder layer over rows [n, H] of state.x, in place.
    private func layer(_ l: Int, rows n: Int, options o: MoEOptions) {
        let s = state, h = c.hiddenSize
        let layer = model.decoderLayer(l, products: products), w = layer.weights
        let ad = adapters?.layers[l] ?? LayerAdapters()
        rmsnormForward(out: s.ln.pointer, rstd: s.rstd.pointer, x: s.x.pointer, weight: w.inputNorm, rows: n, cols: h,
                       eps: c.rmsNormEps)
        layer.attentionInputs(x: s.ln.pointer, rows: n, at: .batch(1, n, UnsafePointer(s.positions.baseAddress!)), adapters: ad,
                              into: s.attentionInputs, rope: model.rope)
        s.cache(layer: l, rows: n)
        attend(layer, rows: n)
        layer.compactAttention(s.attn.pointer, rows: n)
        // x = x + r * o_proj(attn), in place (resid: o_proj's output when r != 1).
        layer.attentionOutput(mid: s.x.pointer, x: s.x.pointer, attn: s.attn.pointer, rows: n, adapter: ad.o,
                              u: s.u.pointer, scratch: s.resid?.pointer ?? s.ln.pointer)
        rmsnormForward(out: s.ln.pointer, rstd: s.rstd.pointer, x: s.x.pointer, weight: w.postAttentionNorm, rows: n,
                       cols: h, eps: c.rmsNormEps)
        // x = x + r * ffn(ln), in place (resid keeps x when r != 1).
        let base = layer.beginResidual(out: s.x.pointer, base: s.x.pointer, count: n * h, saved: s.resid?.pointer)
        layer.feedForwardSublayer(out: s.x.pointer, x: s.ln.pointer, rows: n, adapters: adapters, layerAdapters: ad,
                                  buffers: s.feedForward, options: o, valid: UnsafePointer(s.valid.baseAddress!), statistics: nil)
        layer.endResidual(out: s.x.pointer, base: base, count: n * h)
    }

    /// attn [n, nH*D]: each row's query over its slot's cached positions first...pos (a
    /// sliding window W keeps pos - W < j), rows split over the workers.
    private func attend(_ layer: DecoderLayer, rows n: Int) {
        let s = state, d = c.headDim, qd = c.qDim
        let group = c.numHeads / c.numKVHeads, scale = c.attentionMultiplier ?? 1 / Float(d).squareRoot()
        parallelChunks(n, minChunk: 1) { range in
            let scores = s.scores.pointer(count: self.maxLength)
            for i in range {
                let pos = Int(s.positions[i]), slot = Int(s.slotOf[i])
                let first = layer.window.map { max(0, pos - $0 + 1) } ?? 0
                attentionDecodeStep(out: s.attn.pointer + i * qd, q: s.q.pointer + i * qd,
                                    keys: s.keys(layer: layer.index, slot: slot), values: s.values(layer: layer.index, slot: slot),
                                    first: first, pos: pos, heads: c.numHeads, group: group, headDim: d, kvDim: c.kvDim,
                                    scale: scale, scores: scores, sinks: layer.sinks)
            }
        }
    }

    /// logits [outputs, V] of rows state.outRows[0..<outputs], into logits rows from `logitRow`.
    private func head(outputs m: Int, logitRow: Int) {
        guard m > 0 else { return }
        let s = state, h = c.hiddenSize, y = s.logits.pointer + logitRow * c.vocabSize
        for j in 0..<m {
            rmsnormForward(out: s.ln.pointer + j * h, rstd: s.rstd.pointer + j, x: s.x.pointer + Int(s.outRows[j]) * h,
                           weight: model.finalNorm, rows: 1, cols: h, eps: c.rmsNormEps)
        }
        linearForward(y: y, x: s.ln.pointer, rows: m, weight: lmHead, path: products)
        if let lh = adapters?.head { loraForward(y: y, x: s.ln.pointer, rows: m, adapter: lh, u: s.u.pointer) }
        if c.logitsScaling != 1 { divideInPlace(y, count: m * c.vocabSize, by: c.logitsScaling) }
    }
}

/// The decoder's buffers: per-slot KV caches and the activations of up to `rows` rows.
final class DecoderState {
    let c: ModelConfig
    let maxLength: Int
    /// Per layer [slots, maxLength, nKV*D], after RoPE.
    let keyCache: [FloatBuffer], valueCache: [FloatBuffer]
    let tokens: UnsafeMutableBufferPointer<Int32>, slotOf: UnsafeMutableBufferPointer<Int32>
    /// The rows whose logits a call computes, in the order of the logits' rows.
    let outRows: UnsafeMutableBufferPointer<Int32>
    let positions: UnsafeMutableBufferPointer<Int32>
    let valid: UnsafeMutableBufferPointer<Bool>
    let x: FloatBuffer, ln: FloatBuffer, rstd: FloatBuffer   // [rows, H], [rows, H], [rows]
    let qkRstd: FloatBuffer                                  // [rows * nH] rstd of the q/k norms
    let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer       // [rows, nH*D], [rows, nKV*D] x 2
    let attn: FloatBuffer                                    // [rows, nH*D]
    let scores = PerWorkerScratch(minimumCount: 1024)        // [maxLength] per worker
    let gate: FloatBuffer, up: FloatBuffer, act: FloatBuffer
    let u: FloatBuffer                                       // [rows, r] LoRA scratch
    let ffnU: (FloatBuffer, FloatBuffer, FloatBuffer)        // [rows * k, r] each
    let routing: RoutingBuffers?
    let experts: ExpertBuffers?
    let shared: SharedExpertActivations?
    let logits: FloatBuffer                                  // [logitRows, V]
    /// [rows, H] the residual input of a sublayer when residual_multiplier != 1 (Granite).
    let resid: FloatBuffer?
    /// DeepSeek-V2's latent attention: its activations.
    let mla: MLAActivations?

    init(config c: ModelConfig, rows n: Int, slots: Int, maxLength: Int, loraRank: Int, logitRows: Int) {
        self.c = c
        self.maxLength = maxLength
        keyCache = (0..<c.numLayers).map { _ in FloatBuffer(count: slots * maxLength * c.kvDim, zeroed: false) }
        valueCache = (0..<c.numLayers).map { _ in FloatBuffer(count: slots * maxLength * c.kvDim, zeroed: false) }
        tokens = .allocate(capacity: n); tokens.initialize(repeating: 0)
        slotOf = .allocate(capacity: n); slotOf.initialize(repeating: 0)
        outRows = .allocate(capacity: n); outRows.initialize(repeating: 0)
        positions = .allocate(capacity: n); positions.initialize(repeating: 0)
        valid = .allocate(capacity: n); valid.initialize(repeating: true)
        let h = c.hiddenSize
        x = FloatBuffer(count: n * h); ln = FloatBuffer(count: n * h); rstd = FloatBuffer(count: n)
        qkRstd = FloatBuffer(count: n * c.numHeads)
        q = FloatBuffer(count: n * c.qDim); k = FloatBuffer(count: n * c.kvDim); v = FloatBuffer(count: n * c.kvDim)
        attn = FloatBuffer(count: n * c.qDim)
        let scratch = c.feedForwardScratch(tokens: n)
        gate = FloatBuffer(count: scratch); up = FloatBuffer(count: scratch); act = FloatBuffer(count: scratch)
        let r = max(loraRank, 1), kRows = n * max(1, c.expertsPerToken)
        u = FloatBuffer(count: n * r)
        ffnU = (FloatBuffer(count: kRows * r), FloatBuffer(count: kRows * r), FloatBuffer(count: kRows * r))
        routing = c.isMoE ? RoutingBuffers(tokens: n, experts: c.numExperts, k: c.expertsPerToken) : nil
        routing?.configure(c)
        experts = c.isMoE ? ExpertBuffers(assignments: n * c.expertsPerToken, hidden: h, inter: c.expertIntermediateSize) : nil
        shared = c.sharedExpertIntermediateSize > 0
            ? SharedExpertActivations(tokens: n, hidden: h, inter: c.sharedExpertIntermediateSize) : nil
        logits = FloatBuffer(count: logitRows * c.vocabSize)
        resid = c.residualMultiplier != 1 ? FloatBuffer(count: n * h) : nil
        mla = c.mla.map { MLAActivations(tokens: n, shape: $0, shared: MLAScratch(tokens: n, heads: c.numHeads, shape: $0)) }
    }

    deinit {
        tokens.deallocate(); slotOf.deallocate(); outRows.deallocate(); positions.deallocate(); valid.deallocate()
    }

    func keys(layer l: Int, slot: Int) -> UnsafePointer<Float> { UnsafePointer(keyCache[l].pointer + slot * maxLength * c.kvDim) }
    func values(layer l: Int, slot: Int) -> UnsafePointer<Float> { UnsafePointer(valueCache[l].pointer + slot * maxLength * c.kvDim) }

    /// Positions 0..<count of slot `from` into slot `to`, in every layer's keys and values.
    func copy(from: Int, to: Int, positions count: Int) {
        let n = count * c.kvDim, stride = maxLength * c.kvDim
        for l in 0..<c.numLayers {
            (keyCache[l].pointer + to * stride).update(from: keyCache[l].pointer + from * stride, count: n)
            (valueCache[l].pointer + to * stride).update(from: valueCache[l].pointer + from * stride, count: n)
        }
    }

    /// Stores rows 0..<n of k and v at their slots' positions in layer l's cache.
    func cache(layer l: Int, rows n: Int) {
        let kv = c.kvDim
        for i in 0..<n {
            let at = (Int(slotOf[i]) * maxLength + Int(positions[i])) * kv
            (keyCache[l].pointer + at).update(from: k.pointer + i * kv, count: kv)
            (valueCache[l].pointer + at).update(from: v.pointer + i * kv, count: kv)
        }
    }

    var attentionInputs: AttentionInputs {
        AttentionInputs(q: q.pointer, k: k.pointer, v: v.pointer, uq: u.pointer, uk: u.pointer, uv: u.pointer,
                        qRstd: qkRstd.pointer, kRstd: qkRstd.pointer, mla: mla)
    }

    var feedForward: FeedForwardBuffers {
        let cache = FeedForwardLoRACache(gate: ffnU.0.pointer, up: ffnU.1.pointer, down: ffnU.2.pointer)
        return FeedForwardBuffers(gate: gate.pointer, up: up.pointer, act: act.pointer, cache: cache, routing: routing,
                                  experts: experts, uRouter: u.pointer, shared: shared, sharedCache: cache)
    }
}
