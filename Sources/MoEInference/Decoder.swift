import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// Token-by-token inference with a KV cache: each step runs one new token through every
/// layer, attending over the keys and values of all earlier positions, which stay in the
/// cache. Walks each layer through the same description and sublayer functions as the
/// batched forward pass (Model/DecoderLayer.swift, rows = 1), with adapters applied (LoRA,
/// fully trained routers). Allocates everything up front.
public final class Decoder {
    public let model: Transformer
    public let adapters: AdapterSet?
    public let maxLength: Int
    public private(set) var length = 0

    package let c: ModelConfig
    package let keys: [FloatBuffer]     // per layer [maxLength, nKV*D], after RoPE
    package let values: [FloatBuffer]   // per layer [maxLength, nKV*D]
    package let x: FloatBuffer, ln: FloatBuffer, rstd: FloatBuffer
    package let qkRstd: FloatBuffer     // [nH] rstd of the q/k norms
    package let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, attn: FloatBuffer, scores: FloatBuffer
    package let gate: FloatBuffer, up: FloatBuffer, act: FloatBuffer
    package let u: FloatBuffer          // [r] LoRA scratch (one row)
    package let ffnU: (FloatBuffer, FloatBuffer, FloatBuffer)   // [k, r] each
    package let routing: RoutingBuffers?
    package let experts: ExpertBuffers?
    package let shared: SharedExpertActivations?
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
        let inputs = AttentionInputs(q: q.pointer, k: k.pointer, v: v.pointer, uq: u.pointer, uk: u.pointer, uv: u.pointer,
                                     qRstd: qkRstd.pointer, kRstd: qkRstd.pointer, mla: mla)
        let cache = FeedForwardLoRACache(gate: ffnU.0.pointer, up: ffnU.1.pointer, down: ffnU.2.pointer)
        let ffn = FeedForwardBuffers(gate: gate.pointer, up: up.pointer, act: act.pointer, cache: cache, routing: routing,
                                     experts: experts, uRouter: u.pointer, shared: shared, sharedCache: cache)
        for l in 0..<c.numLayers {
            // The layer's walk (Model/DecoderLayer.swift) with rows = 1, keeping nothing for a backward pass.
            let layer = model.decoderLayer(l), w = layer.weights
            let ad = adapters?.layers[l] ?? LayerAdapters()
            rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: w.inputNorm, rows: 1, cols: h, eps: c.rmsNormEps)
            layer.attentionInputs(x: ln.pointer, rows: 1, at: .single(pos), adapters: ad, into: inputs, rope: model.rope)
            (keys[l].pointer + pos * c.kvDim).update(from: k.pointer, count: c.kvDim)
            (values[l].pointer + pos * c.kvDim).update(from: v.pointer, count: c.kvDim)
            // Attention of the new query over positions 0...pos.
            let group = c.numHeads / c.numKVHeads, scale = c.attentionMultiplier ?? 1 / Float(d).squareRoot()
            // Sliding window W: positions pos - W < j <= pos (the cache keeps them all).
            let first = layer.window.map { max(0, pos - $0 + 1) } ?? 0
            attentionDecodeStep(out: attn.pointer, q: q.pointer, keys: keys[l].pointer, values: values[l].pointer,
                                first: first, pos: pos, heads: c.numHeads, group: group, headDim: d, kvDim: c.kvDim,
                                scale: scale, scores: scores.pointer, sinks: layer.sinks)
            layer.compactAttention(attn.pointer, rows: 1)
            // x = x + r * o_proj(attn), in place (resid: o_proj's output when r != 1).
            layer.attentionOutput(mid: x.pointer, x: x.pointer, attn: attn.pointer, rows: 1, adapter: ad.o, u: u.pointer,
                                  scratch: resid?.pointer ?? ln.pointer)
            rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: w.postAttentionNorm, rows: 1, cols: h, eps: c.rmsNormEps)
            // x = x + r * ffn(ln), in place (resid keeps x when r != 1).
            let base = layer.beginResidual(out: x.pointer, base: x.pointer, count: h, saved: resid?.pointer)
            withUnsafePointer(to: &valid) { valid in
                layer.feedForwardSublayer(out: x.pointer, x: ln.pointer, rows: 1, adapters: adapters, layerAdapters: ad,
                                          buffers: ffn, options: o, valid: valid, statistics: nil)
            }
            layer.endResidual(out: x.pointer, base: base, count: h)
        }
        rmsnormForward(out: ln.pointer, rstd: rstd.pointer, x: x.pointer, weight: model.finalNorm, rows: 1, cols: h, eps: c.rmsNormEps)
        linearForward(y: logits.pointer, x: ln.pointer, rows: 1, weight: model.lmHead)
        if let lh = adapters?.head { loraForward(y: logits.pointer, x: ln.pointer, rows: 1, adapter: lh, u: u.pointer) }
        if c.logitsScaling != 1 { divideInPlace(logits.pointer, count: c.vocabSize, by: c.logitsScaling) }
        length += 1
        return logits.pointer
    }
}
