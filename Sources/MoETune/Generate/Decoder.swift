import Foundation

/// Token-by-token inference with a KV cache: each step runs one new token through every
/// layer, attending over the keys and values of all earlier positions, which stay in the
/// cache. Uses the same layer functions as the batched forward pass (rows = 1), with
/// adapters applied (LoRA, fully trained routers). Allocates everything up front.
public final class Decoder {
    public let model: Transformer
    public let adapters: AdapterSet?
    public let maxLength: Int
    public private(set) var length = 0

    let c: ModelConfig
    let keys: [FloatBuffer]     // per layer [maxLength, nKV*D], after RoPE
    let values: [FloatBuffer]   // per layer [maxLength, nKV*D]
    let x: FloatBuffer, ln: FloatBuffer, rstd: FloatBuffer
    let qkRstd: FloatBuffer     // [nH] rstd of the q/k norms
    let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, attn: FloatBuffer, scores: FloatBuffer
    let gate: FloatBuffer, up: FloatBuffer, act: FloatBuffer
    let u: FloatBuffer          // [r] LoRA scratch (one row)
    let ffnU: (FloatBuffer, FloatBuffer, FloatBuffer)   // [k, r] each
    let routing: RoutingBuffers?
    let experts: ExpertBuffers?
    let shared: SharedExpertActivations?
    public let logits: FloatBuffer   // [V]
    /// [H] the residual input of a sublayer when residual_multiplier != 1 (Granite).
    private let resid: FloatBuffer?
    /// DeepSeek-V2's latent attention: its one-token activations.
    private let mla: MLAActivations?
    private var valid = true

    public init(model: Transformer, adapters: AdapterSet?, maxLength: Int) {
        self.model = model
        self.adapters = adapters
        let c = model.config
        self.c = c
        self.maxLength = min(maxLength, model.rope.maxPositions)
        keys = (0..<c.numLayers).map { _ in FloatBuffer(count: maxLength * c.kvDim) }
        values = (0..<c.numLayers).map { _ in FloatBuffer(count: maxLength * c.kvDim) }
        x = FloatBuffer(count: c.hiddenSize); ln = FloatBuffer(count: c.hiddenSize); rstd = FloatBuffer(count: 1)
        qkRstd = FloatBuffer(count: c.numHeads)
        q = FloatBuffer(count: c.qDim); k = FloatBuffer(count: c.kvDim); v = FloatBuffer(count: c.kvDim)
        attn = FloatBuffer(count: c.qDim); scores = FloatBuffer(count: maxLength)
        let rows = max(1, c.expertsPerToken)
        gate = FloatBuffer(count: c.feedForwardScratch(tokens: 1)); up = FloatBuffer(count: c.feedForwardScratch(tokens: 1))
        act = FloatBuffer(count: c.feedForwardScratch(tokens: 1))
        shared = c.sharedExpertIntermediateSize > 0
            ? SharedExpertActivations(tokens: 1, hidden: c.hiddenSize, inter: c.sharedExpertIntermediateSize) : nil
        let r = max(adapters?.maxRank ?? 0, 1)
        u = FloatBuffer(count: r)
        ffnU = (FloatBuffer(count: rows * r), FloatBuffer(count: rows * r), FloatBuffer(count: rows * r))
        routing = c.isMoE ? RoutingBuffers(tokens: 1, experts: c.numExperts, k: c.expertsPerToken) : nil
        routing?.configure(c)
        experts = c.isMoE ? ExpertBuffers(assignments: c.expertsPerToken, hidden: c.hiddenSize, inter: c.expertIntermediateSize) : nil
        logits = FloatBuffer(count: c.vocabSize)
        resid = c.residualMultiplier != 1 ? FloatBuffer(count: c.hiddenSize) : nil
        mla = c.mla.map { MLAActivations(tokens: 1, shape: $0, shared: MLAScratch(tokens: 1, heads: c.numHeads, shape: $0)) }
    }

    public func reset() { length = 0 }

    /// Feeds one token at position `length` and returns the logits of the next one [V].
    @discardableResult
    public func step(_ token: Int32) throws -> UnsafeMutablePointer<Float> {
        guard length < maxLength else {
            throw MoETuneError.invalid("the sequence reached the maximum length \(maxLength)")
        }
        guard token >= 0, Int(token) < c.vocabSize else {
            throw MoETuneError.invalid("token id \(token) is outside the model's vocabulary of \(c.vocabSize)")
        }
        let h = c.hiddenSize, pos = length, d = c.headDim
        var o = model.moe
        o.training = false
        x.pointer.update(from: model.embed.pointer + Int(token) * h, count: h)
        if c.embeddingMultiplier != 1 { scaleInPlace(x.pointer, count: h, by: c.embeddingMultiplier) }
        for (l, w) in model.layers.enumerated() {
            let ad = adapters?.layers[l] ?? LayerAdapters()
            rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: w.inputNorm, rows: 1, cols: h, eps: c.rmsNormEps)
            if let m = c.mla, let ma = mla, let mw = w.mlaWeights {
                // MLA: q, k, v of this position (RoPE at pos); the cache keeps full keys and values.
                mlaForward(q: q.pointer, k: k.pointer, v: v.pointer, x: ln.pointer, rows: 1, seq: 1, positionOffset: pos,
                           heads: c.numHeads, shape: m, weights: mw,
                           adapters: MLAAdapters(q: ad.q, kvA: ad.k, kvB: ad.v, uq: u.pointer, ukvA: u.pointer, ukvB: u.pointer),
                           acts: ma, rope: model.rope)
            } else {
            project(q.pointer, ln.pointer, w.q, ad.q)
            project(k.pointer, ln.pointer, w.k, ad.k)
            project(v.pointer, ln.pointer, w.v, ad.v)
            biasForward(y: q.pointer, rows: 1, bias: w.qBias, cols: c.qDim)
            biasForward(y: k.pointer, rows: 1, bias: w.kBias, cols: c.kvDim)
            biasForward(y: v.pointer, rows: 1, bias: w.vBias, cols: c.kvDim)
            if let qn = w.qNorm, let kn = w.kNorm {
                // In place: each row is read whole before it is written.
                let qs = c.qkNormShape(tokens: 1, heads: c.numHeads), ks = c.qkNormShape(tokens: 1, heads: c.numKVHeads)
                rmsnormForward(out: q.pointer, rstd: qkRstd.pointer, x: q.pointer, weight: qn, rows: qs.rows, cols: qs.cols, eps: c.rmsNormEps)
                rmsnormForward(out: k.pointer, rstd: qkRstd.pointer, x: k.pointer, weight: kn, rows: ks.rows, cols: ks.cols, eps: c.rmsNormEps)
            }
            if let clip = c.clipQKV {
                clampForward(q.pointer, count: c.qDim, limit: clip)
                clampForward(k.pointer, count: c.kvDim, limit: clip)
                clampForward(v.pointer, count: c.kvDim, limit: clip)
            }
            model.rope.rotate(q.pointer, position: pos, heads: c.numHeads)
            model.rope.rotate(k.pointer, position: pos, heads: c.numKVHeads)
            } // MLA or q/k/v (left unindented to keep this merge-friendly)
            (keys[l].pointer + pos * c.kvDim).update(from: k.pointer, count: c.kvDim)
            (values[l].pointer + pos * c.kvDim).update(from: v.pointer, count: c.kvDim)
            // Attention of the new query over positions 0...pos.
            let group = c.numHeads / c.numKVHeads, scale = c.attentionMultiplier ?? 1 / Float(d).squareRoot()
            // Sliding window W: positions pos - W < j <= pos (the cache keeps them all).
            let first = c.window(layer: l).map { max(0, pos - $0 + 1) } ?? 0
            attentionDecodeStep(out: attn.pointer, q: q.pointer, keys: keys[l].pointer, values: values[l].pointer,
                                first: first, pos: pos, heads: c.numHeads, group: group, headDim: d, kvDim: c.kvDim,
                                scale: scale, scores: scores.pointer, sinks: w.sinks)
            // x += r * o_proj(attn), r = residual_multiplier: with r != 1 x is kept in resid
            // and the sublayer accumulates into x = 0; then x = resid + r * x. Same for the MLP.
            if let m = c.mla { mlaCompactOutput(attn.pointer, rows: 1, heads: c.numHeads, shape: m) }
            if let rs = resid { rs.pointer.update(from: x.pointer, count: h); x.pointer.update(repeating: 0, count: h) }
            linearForward(y: x.pointer, x: attn.pointer, rows: 1, weight: w.o, accumulate: true)
            biasForward(y: x.pointer, rows: 1, bias: w.oBias, cols: h)
            if let lo = ad.o { loraForward(y: x.pointer, x: attn.pointer, rows: 1, adapter: lo, u: u.pointer) }
            if let rs = resid { scaledResidual(x.pointer, base: rs.pointer, count: h, scale: c.residualMultiplier) }
            rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: w.postAttentionNorm, rows: 1, cols: h, eps: c.rmsNormEps)
            if let rs = resid { rs.pointer.update(from: x.pointer, count: h); x.pointer.update(repeating: 0, count: h) }
            let cache = FeedForwardLoRACache(gate: ffnU.0.pointer, up: ffnU.1.pointer, down: ffnU.2.pointer)
            if let mlp = w.mlp {
                feedForward(out: x.pointer, x: ln.pointer, rows: 1, weights: mlp, adapters: ad.mlp, cache: cache,
                            gate: gate.pointer, up: up.pointer, act: act.pointer, accumulate: true)
            } else if let base = w.router, let r = routing, let scratch = experts {
                let router = adapters?.trainedRouter(layer: l) ?? base
                linearForward(y: r.logits.pointer, x: ln.pointer, rows: 1, weight: router)
                if let lr = ad.router { loraForward(y: r.logits.pointer, x: ln.pointer, rows: 1, adapter: lr, u: u.pointer) }
                biasForward(y: r.logits.pointer, rows: 1, bias: w.routerBias, cols: c.numExperts)
                withUnsafePointer(to: &valid) { r.route(tokens: 1, valid: $0, options: o, layer: l) }
                moeForward(out: x.pointer, x: ln.pointer, tokens: 1, hidden: h, experts: w.experts,
                           adapters: ad.experts, cache: cache, routing: r, scratch: scratch)
                if let se = w.sharedExpert, let sa = shared {
                    sharedExpertForward(out: x.pointer, x: ln.pointer, rows: 1, hidden: h, weights: se, gate: w.sharedExpertGate,
                                        adapters: ad.shared, cache: cache, acts: sa, act: act.pointer)
                }
            }
            if let rs = resid { scaledResidual(x.pointer, base: rs.pointer, count: h, scale: c.residualMultiplier) }
        }
        rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: model.finalNorm, rows: 1, cols: h, eps: c.rmsNormEps)
        linearForward(y: logits.pointer, x: ln.pointer, rows: 1, weight: model.lmHead)
        if let lh = adapters?.head { loraForward(y: logits.pointer, x: ln.pointer, rows: 1, adapter: lh, u: u.pointer) }
        if c.logitsScaling != 1 { divideInPlace(logits.pointer, count: c.vocabSize, by: c.logitsScaling) }
        length += 1
        return logits.pointer
    }

    @inline(__always)
    private func project(_ y: UnsafeMutablePointer<Float>, _ xIn: UnsafePointer<Float>, _ w: Matrix, _ l: LoRAAdapter?) {
        linearForward(y: y, x: xIn, rows: 1, weight: w)
        if let l { loraForward(y: y, x: xIn, rows: 1, adapter: l, u: u.pointer) }
    }
}
