import Foundation
import MoEFormats
import MoEText

/// One decoder layer as the three walks see it — the batched forward pass (Model/Forward.swift),
/// the backward pass (Model/Backward.swift) and the KV-cache decoder (Generate/Decoder.swift):
/// which slots the layer has, read from the config and its loaded weights, and the sublayer
/// functions all three call, each backward beside its forward. A layer is
///   x   [N, H] → ln1 = RMSNorm(x) → attentionInputs: q [N, nH*D], k, v [N, nKV*D]
///       → attention (the walk's: batched, or over the KV cache) → attn [N, nH*D]
///   mid [N, H] = x + r * o_proj(attn)                          (attentionOutput)
///   out [N, H] = mid + r * ffn(RMSNorm(mid))                   (feedForwardSublayer)
/// with r = residual_multiplier (Granite; 1 elsewhere). A slot a family adds (a bias, a
/// norm, a multiplier, a kind of feed-forward) is added here once, not in each walk.
package struct DecoderLayer {
    /// How q, k, v are made from ln1.
    package enum Attention {
        /// q/k/v projections (+ LoRA), then the optional q/k/v biases, q/k RMSNorm,
        /// clip_qkv clamp, and RoPE on q and k, in that order.
        case standard
        /// DeepSeek-V2's multi-head latent attention (Layers/MLA.swift).
        case latent(MLAShape, MLAWeights)
    }

    /// The feed-forward block after the attention.
    package enum FeedForward {
        /// One SwiGLU MLP.
        case dense(FeedForwardWeights)
        /// Routed experts behind a router [E, H] (+ its bias, LoRA, or trained in full),
        /// plus a shared expert (Qwen2-MoE with a sigmoid gate, DeepSeek-V2 without one).
        case experts(router: Matrix, shared: FeedForwardWeights?)
    }

    package let index: Int
    package let config: ModelConfig
    package let weights: LayerWeights
    package let attention: Attention
    /// q/k RMSNorm weights (Qwen3 [D] per head, OLMoE [nH*D] / [nKV*D]); nil: none.
    package let qkNorm: (q: UnsafePointer<Float>, k: UnsafePointer<Float>)?
    /// clip_qkv (OLMoE): q, k, v clamped to [-clip, clip] before RoPE; nil: none.
    package let clip: Float?
    /// Sliding window of this layer (Mistral, GPT-OSS's sliding layers); nil: full causal.
    package let window: Int?
    /// Per-head attention sink logits [nH] (GPT-OSS); nil: none.
    package let sinks: UnsafePointer<Float>?
    package let ffn: FeedForward
    /// residual_multiplier r (Granite): each sublayer adds r * its output to the residual.
    package let residualMultiplier: Float
    /// How the layer's linear products read their weights: exact (training, tests) or the
    /// decoder's fast matrix-vector products.
    package var products: ProductPath = .exact

    package init(index l: Int, config c: ModelConfig, weights w: LayerWeights) {
        index = l
        config = c
        weights = w
        if let m = c.mla, let mw = w.mlaWeights { attention = .latent(m, mw) } else { attention = .standard }
        if let qn = w.qNorm, let kn = w.kNorm { qkNorm = (qn, kn) } else { qkNorm = nil }
        clip = c.clipQKV
        window = c.window(layer: l)
        sinks = w.sinks
        if let mlp = w.mlp {
            ffn = .dense(mlp)
        } else {
            // Transformer.init loads either an MLP or a router with its experts for every layer.
            ffn = .experts(router: w.router!, shared: w.sharedExpert)
        }
        residualMultiplier = c.residualMultiplier
    }

    /// This layer's attention over a batch [B, T], its window from `window` (every walk's source of it).
    package func attentionShape(batch b: Int, seq t: Int) -> AttentionShape {
        config.attentionShape(batch: b, seq: t, window: window)
    }
}

extension Transformer {
    /// The description of layer l (built on the fly: a few words, nothing allocated).
    package func decoderLayer(_ l: Int, products: ProductPath = .exact) -> DecoderLayer {
        var layer = DecoderLayer(index: l, config: config, weights: layers[l])
        layer.products = products
        return layer
    }
}

/// Where a sublayer's rows sit in their sequences (RoPE reads it).
package enum RowPositions {
    /// A batch [B, T]: row b*T + t has position t, or positions[b*T + t] (packed rows).
    case batch(Int, Int, UnsafePointer<Int32>?)
    /// One token at this position (the KV-cache decoder).
    case single(Int)
}

// MARK: - Residual scaling

extension DecoderLayer {
    /// Before a sublayer that accumulates its output into `out` [N, H]: out = base (r = 1),
    /// or out = 0 with base kept in `saved` when out and base are one buffer (r != 1).
    /// Returns the base that `endResidual` adds.
    @inline(__always)
    package func beginResidual(out: UnsafeMutablePointer<Float>, base: UnsafePointer<Float>, count: Int,
                       saved: UnsafeMutablePointer<Float>?) -> UnsafePointer<Float> {
        let r = residualMultiplier
        if r == 1 {
            if UnsafePointer(out) != base { out.update(from: base, count: count) }
            return base
        }
        var kept = base
        if UnsafePointer(out) == base, let saved {
            saved.update(from: base, count: count)
            kept = UnsafePointer(saved)
        }
        out.update(repeating: 0, count: count)
        return kept
    }

    /// After it: out = base + r * out (r != 1; nothing to do when r = 1).
    @inline(__always)
    package func endResidual(out: UnsafeMutablePointer<Float>, base: UnsafePointer<Float>, count: Int) {
        if residualMultiplier != 1 { scaledResidual(out, base: base, count: count, scale: residualMultiplier) }
    }

    /// Backward of the residual scaling: d of the sublayer's output = r * d out [N, H]
    /// (in `scaled` when r != 1; d out itself when r = 1).
    @inline(__always)
    package func scaledGradient(_ dout: UnsafePointer<Float>, count: Int, scaled: FloatBuffer?) -> UnsafePointer<Float> {
        guard residualMultiplier != 1, let scaled else { return dout }
        scaledCopy(scaled.pointer, dout, count: count, scale: residualMultiplier)
        return UnsafePointer(scaled.pointer)
    }
}

// MARK: - Attention inputs: ln1 → q, k, v

/// Where attentionInputs writes, and what it keeps for the backward pass. The forward pass
/// keeps the values before the q/k norm and before the clamp (qRaw.., qClip..); the decoder
/// passes nil for them and normalizes and clamps in place.
package struct AttentionInputs {
    package var q: UnsafeMutablePointer<Float>      // [rows, nH*D] after RoPE
    package var k: UnsafeMutablePointer<Float>      // [rows, nKV*D] after RoPE
    package var v: UnsafeMutablePointer<Float>      // [rows, nKV*D]
    /// LoRA inputs u = x A^T [rows, r] of q, k, v (MLA: q, kv_a, kv_b); nil without adapters.
    package var uq: UnsafeMutablePointer<Float>?
    package var uk: UnsafeMutablePointer<Float>?
    package var uv: UnsafeMutablePointer<Float>?
    /// q/k before their norm, kept (forward) [rows, nH*D], [rows, nKV*D]; nil: in place.
    package var qRaw: UnsafeMutablePointer<Float>?
    package var kRaw: UnsafeMutablePointer<Float>?
    /// rstd of the q/k norms [rows * heads] or [rows] (the decoder: one scratch for both).
    package var qRstd: UnsafeMutablePointer<Float>?
    package var kRstd: UnsafeMutablePointer<Float>?
    /// q, k, v before the clip_qkv clamp, kept (forward); nil: not kept.
    package var qClip: UnsafeMutablePointer<Float>?
    package var kClip: UnsafeMutablePointer<Float>?
    package var vClip: UnsafeMutablePointer<Float>?
    /// MLA's activations.
    package var mla: MLAActivations?

    package init(q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, uq: UnsafeMutablePointer<Float>? = nil, uk: UnsafeMutablePointer<Float>? = nil, uv: UnsafeMutablePointer<Float>? = nil, qRaw: UnsafeMutablePointer<Float>? = nil, kRaw: UnsafeMutablePointer<Float>? = nil, qRstd: UnsafeMutablePointer<Float>? = nil, kRstd: UnsafeMutablePointer<Float>? = nil, qClip: UnsafeMutablePointer<Float>? = nil, kClip: UnsafeMutablePointer<Float>? = nil, vClip: UnsafeMutablePointer<Float>? = nil, mla: MLAActivations? = nil) {
        self.q = q
        self.k = k
        self.v = v
        self.uq = uq
        self.uk = uk
        self.uv = uv
        self.qRaw = qRaw
        self.kRaw = kRaw
        self.qRstd = qRstd
        self.kRstd = kRstd
        self.qClip = qClip
        self.kClip = kClip
        self.vClip = vClip
        self.mla = mla
    }
}

extension LayerActivations {
    /// This layer's q, k, v and what their backward needs.
    package var attentionInputs: AttentionInputs {
        AttentionInputs(q: q.pointer, k: k.pointer, v: v.pointer,
                        uq: lora?.q.pointer, uk: lora?.k.pointer, uv: lora?.v.pointer,
                        qRaw: qRaw?.pointer, kRaw: kRaw?.pointer, qRstd: qRstd?.pointer, kRstd: kRstd?.pointer,
                        qClip: qClip?.pointer, kClip: kClip?.pointer, vClip: vClip?.pointer, mla: mla)
    }
}

extension DecoderLayer {
    /// q [rows, nH*D], k, v [rows, nKV*D] from x = ln1 [rows, H]:
    ///   standard: q = x Wq^T (+ LoRA) (+ bq), k, v likewise; q/k RMSNorm; clip_qkv; RoPE(q, k)
    ///   latent:   mlaForward (Layers/MLA.swift)
    /// Used by the forward pass (rows = N) and by the decoder (rows = 1).
    package func attentionInputs(x: UnsafePointer<Float>, rows n: Int, at p: RowPositions, adapters ad: LayerAdapters,
                         into o: AttentionInputs, rope: RoPETable) {
        let c = config, w = weights
        switch attention {
        case let .latent(m, mw):
            let mad = MLAAdapters(q: ad.q, kvA: ad.k, kvB: ad.v, uq: o.uq, ukvA: o.uk, ukvB: o.uv)
            switch p {
            case let .batch(_, t, positions):
                mlaForward(q: o.q, k: o.k, v: o.v, x: x, rows: n, seq: t, heads: c.numHeads, shape: m, weights: mw,
                           adapters: mad, acts: o.mla!, rope: rope, positions: positions, path: products)
            case let .single(pos):
                mlaForward(q: o.q, k: o.k, v: o.v, x: x, rows: 1, seq: 1, positionOffset: pos, heads: c.numHeads,
                           shape: m, weights: mw, adapters: mad, acts: o.mla!, rope: rope, path: products)
            }
        case .standard:
            linearForward(y: o.q, x: x, rows: n, weight: w.q, path: products)
            if let l = ad.q { loraForward(y: o.q, x: x, rows: n, adapter: l, u: o.uq!) }
            linearForward(y: o.k, x: x, rows: n, weight: w.k, path: products)
            if let l = ad.k { loraForward(y: o.k, x: x, rows: n, adapter: l, u: o.uk!) }
            linearForward(y: o.v, x: x, rows: n, weight: w.v, path: products)
            if let l = ad.v { loraForward(y: o.v, x: x, rows: n, adapter: l, u: o.uv!) }
            // Qwen2: q/k/v biases [nH*D], [nKV*D], [nKV*D].
            biasForward(y: o.q, rows: n, bias: w.qBias, cols: c.qDim)
            biasForward(y: o.k, rows: n, bias: w.kBias, cols: c.kvDim)
            biasForward(y: o.v, rows: n, bias: w.vBias, cols: c.kvDim)
            if let norms = qkNorm {
                let qn = norms.q, kn = norms.k
                // q/k RMSNorm before RoPE: q_raw [rows, nH*D] → q, rows and width per c.qkNorm.
                // In place when nothing is kept: each row is read whole before it is written.
                let qs = c.qkNormShape(tokens: n, heads: c.numHeads), ks = c.qkNormShape(tokens: n, heads: c.numKVHeads)
                var qIn = UnsafePointer(o.q), kIn = UnsafePointer(o.k)
                if let qRaw = o.qRaw, let kRaw = o.kRaw {
                    qRaw.update(from: o.q, count: n * c.qDim)
                    kRaw.update(from: o.k, count: n * c.kvDim)
                    qIn = UnsafePointer(qRaw); kIn = UnsafePointer(kRaw)
                }
                rmsnormForward(out: o.q, rstd: o.qRstd!, x: qIn, weight: qn, rows: qs.rows, cols: qs.cols, eps: c.rmsNormEps)
                rmsnormForward(out: o.k, rstd: o.kRstd!, x: kIn, weight: kn, rows: ks.rows, cols: ks.cols, eps: c.rmsNormEps)
            }
            if let clip {
                // OLMoE: q, k (after their norm) and v clamped before RoPE; the values before
                // the clamp are kept for its backward when there is room.
                if let cq = o.qClip, let ck = o.kClip {
                    cq.update(from: o.q, count: n * c.qDim)
                    ck.update(from: o.k, count: n * c.kvDim)
                }
                clampForward(o.q, count: n * c.qDim, limit: clip)
                clampForward(o.k, count: n * c.kvDim, limit: clip)
                if let cv = o.vClip { cv.update(from: o.v, count: n * c.kvDim) }
                clampForward(o.v, count: n * c.kvDim, limit: clip)
            }
            switch p {
            case let .batch(b, t, positions):
                rope.forward(o.q, batch: b, seq: t, heads: c.numHeads, positions: positions)
                rope.forward(o.k, batch: b, seq: t, heads: c.numKVHeads, positions: positions)
            case let .single(pos):
                rope.rotate(o.q, position: pos, heads: c.numHeads)
                rope.rotate(o.k, position: pos, heads: c.numKVHeads)
            }
        }
    }

    /// Backward of attentionInputs. g.dq [N, nH*D], g.dk, g.dv [N, nKV*D] hold the attention
    /// kernel's gradients (overwritten on the way); x = ln1 [N, H] (the caller recomputes
    /// it when a q/k/v adapter reads it). Accumulates the adapters' gradients and writes
    /// dx = d ln1 [N, H] unless `inputGradient` is false (the lowest trained layer: nothing
    /// below needs it; MLA writes it anyway). Returns whether dx holds d ln1.
    package func attentionInputsBackward(dx: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, batch b: Int,
                                 seq t: Int, positions: UnsafePointer<Int32>?, adapters ad: LayerAdapters,
                                 acts o: AttentionInputs, grads g: BackwardState, rope: RoPETable,
                                 inputGradient: Bool) -> Bool {
        let c = config, w = weights, du = g.du.pointer
        if case let .latent(m, mw) = attention {
            mlaBackward(dx: dx, dq: g.dq.pointer, dk: g.dk.pointer, dv: g.dv.pointer, x: x,
                        rows: n, seq: t, heads: c.numHeads, shape: m, weights: mw,
                        adapters: MLAAdapters(q: ad.q, kvA: ad.k, kvB: ad.v, uq: o.uq, ukvA: o.uk, ukvB: o.uv),
                        acts: o.mla!, grads: g.mla!, rope: rope, du: du, positions: positions)
            return true
        }
        rope.backward(g.dq.pointer, batch: b, seq: t, heads: c.numHeads, positions: positions)
        rope.backward(g.dk.pointer, batch: b, seq: t, heads: c.numKVHeads, positions: positions)
        if let clip, let cq = o.qClip, let ck = o.kClip, let cv = o.vClip {
            // clip_qkv: no gradient where the value was clamped.
            clampBackward(g.dq.pointer, x: cq, count: n * c.qDim, limit: clip)
            clampBackward(g.dk.pointer, x: ck, count: n * c.kvDim, limit: clip)
            clampBackward(g.dv.pointer, x: cv, count: n * c.kvDim, limit: clip)
        }
        if let norms = qkNorm, let scratch = g.dqkRaw {
            let qn = norms.q, kn = norms.k
            // Backward of the q/k RMSNorm: d q_raw from d q (both [N, nH*D]); then k.
            let qs = c.qkNormShape(tokens: n, heads: c.numHeads), ks = c.qkNormShape(tokens: n, heads: c.numKVHeads)
            scratch.pointer.update(repeating: 0, count: n * c.qDim)
            rmsnormBackward(dx: scratch.pointer, dy: g.dq.pointer, x: o.qRaw!, weight: qn,
                            rstd: o.qRstd!, rows: qs.rows, cols: qs.cols)
            g.dq.pointer.update(from: scratch.pointer, count: n * c.qDim)
            scratch.pointer.update(repeating: 0, count: n * c.kvDim)
            rmsnormBackward(dx: scratch.pointer, dy: g.dk.pointer, x: o.kRaw!, weight: kn,
                            rstd: o.kRstd!, rows: ks.rows, cols: ks.cols)
            g.dk.pointer.update(from: scratch.pointer, count: n * c.kvDim)
        }
        // The biases are frozen: nothing to do for them.
        // d ln1 [N, H] through the frozen q/k/v weights is needed only by the layers below.
        if inputGradient { linearBackwardInput(dx: dx, dy: g.dq.pointer, rows: n, weight: w.q, accumulate: false) }
        if let l = ad.q { loraBackward(dx: dx, dy: g.dq.pointer, x: x, rows: n, adapter: l, u: o.uq!, du: du) }
        if inputGradient { linearBackwardInput(dx: dx, dy: g.dk.pointer, rows: n, weight: w.k, accumulate: true) }
        if let l = ad.k { loraBackward(dx: dx, dy: g.dk.pointer, x: x, rows: n, adapter: l, u: o.uk!, du: du) }
        if inputGradient { linearBackwardInput(dx: dx, dy: g.dv.pointer, rows: n, weight: w.v, accumulate: true) }
        if let l = ad.v { loraBackward(dx: dx, dy: g.dv.pointer, x: x, rows: n, adapter: l, u: o.uv!, du: du) }
        return inputGradient
    }
}

// MARK: - Attention output: mid = x + r * o_proj(attn)

extension DecoderLayer {
    /// The attention kernel's output [N, nH*D] made o_proj's input in place: MLA keeps
    /// each head's value part, [N, nH*vD]; otherwise unchanged.
    @inline(__always)
    package func compactAttention(_ attn: UnsafeMutablePointer<Float>, rows n: Int) {
        if case let .latent(m, _) = attention { mlaCompactOutput(attn, rows: n, heads: config.numHeads, shape: m) }
    }

    /// mid [N, H] = x + r * (attn [N, nH*D] Wo^T (+ LoRA) (+ bo)), r = residual_multiplier.
    /// With r != 1 o_proj's output goes to scratch [N, H] first. mid may be x (in place: the
    /// decoder). The forward pass, the backward pass's recomputation of mid and the decoder
    /// all use it.
    package func attentionOutput(mid: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, attn: UnsafePointer<Float>,
                         rows n: Int, adapter: LoRAAdapter?, u: UnsafeMutablePointer<Float>?,
                         scratch: UnsafeMutablePointer<Float>) {
        let h = config.hiddenSize, r = residualMultiplier
        let y = r == 1 ? mid : scratch
        if r == 1, UnsafePointer(mid) != x { mid.update(from: x, count: n * h) }
        linearForward(y: y, x: attn, rows: n, weight: weights.o, accumulate: r == 1, path: products)
        if let adapter, let u { loraForward(y: y, x: attn, rows: n, adapter: adapter, u: u) }
        biasForward(y: y, rows: n, bias: weights.oBias, cols: h)  // GPT-OSS's o_proj bias
        if r != 1 {
            if UnsafePointer(mid) != x { mid.update(from: x, count: n * h) }
            for i in 0..<(n * h) { mid[i] += r * scratch[i] }
        }
    }

    /// Backward of attentionOutput (and of compactAttention): dattn [N, nH*D] = r * dmid Wo
    /// (+ LoRA), MLA's [N, nH*vD] padded back to [N, nH*D]; the o_proj adapter's gradients
    /// accumulate. dmid [N, H]; `scaled` [N, H] holds r * dmid when r != 1.
    package func attentionOutputBackward(dattn: UnsafeMutablePointer<Float>, dmid: UnsafePointer<Float>, attn: UnsafePointer<Float>,
                                 rows n: Int, adapter: LoRAAdapter?, u: UnsafeMutablePointer<Float>?,
                                 grads g: BackwardState) {
        let dout = scaledGradient(dmid, count: n * config.hiddenSize, scaled: g.dscaled)
        linearBackwardInput(dx: dattn, dy: dout, rows: n, weight: weights.o, accumulate: false)
        if let adapter {
            loraBackward(dx: dattn, dy: dout, x: attn, rows: n, adapter: adapter, u: u!, du: g.du.pointer)
        }
        // MLA: d of o_proj's input [N, nH*vD] padded back to the kernel's [N, nH*D].
        if case let .latent(m, _) = attention { mlaExpandGradient(dattn, rows: n, heads: config.numHeads, shape: m) }
    }
}

// MARK: - Feed-forward: out += ffn(ln2)

/// Where feedForwardSublayer writes: the dense MLP's gate/up (kept for backward), the shared
/// act scratch, the routing and expert buffers, the LoRA inputs, router jitter, the shared expert.
package struct FeedForwardBuffers {
    package var gate: UnsafeMutablePointer<Float>?   // [rows, I] dense layers
    package var up: UnsafeMutablePointer<Float>?     // [rows, I]
    package var act: UnsafeMutablePointer<Float>     // [rows, I] silu(gate) * up (scratch)
    package var cache: FeedForwardLoRACache          // LoRA inputs of the MLP / the experts
    package var routing: RoutingBuffers?
    package var experts: ExpertBuffers?
    package var uRouter: UnsafeMutablePointer<Float>?  // [rows, r] the router adapter's input
    package var jitter: FloatBuffer?                 // [rows, H] router jitter factors (training)
    package var moeInput: FloatBuffer?               // [rows, H] the jittered MoE input
    package var shared: SharedExpertActivations?
    package var sharedCache: FeedForwardLoRACache

    package init(gate: UnsafeMutablePointer<Float>? = nil, up: UnsafeMutablePointer<Float>? = nil, act: UnsafeMutablePointer<Float>, cache: FeedForwardLoRACache, routing: RoutingBuffers? = nil, experts: ExpertBuffers? = nil, uRouter: UnsafeMutablePointer<Float>? = nil, jitter: FloatBuffer? = nil, moeInput: FloatBuffer? = nil, shared: SharedExpertActivations? = nil, sharedCache: FeedForwardLoRACache) {
        self.gate = gate
        self.up = up
        self.act = act
        self.cache = cache
        self.routing = routing
        self.experts = experts
        self.uRouter = uRouter
        self.jitter = jitter
        self.moeInput = moeInput
        self.shared = shared
        self.sharedCache = sharedCache
    }
}

extension LayerActivations {
    package func feedForwardBuffers(act: UnsafeMutablePointer<Float>) -> FeedForwardBuffers {
        FeedForwardBuffers(gate: gate?.pointer, up: up?.pointer, act: act, cache: lora?.ffn ?? FeedForwardLoRACache(),
                           routing: routing, experts: experts, uRouter: lora?.router.pointer,
                           jitter: jitter, moeInput: moeInput, shared: shared,
                           sharedCache: lora?.sharedFFN ?? FeedForwardLoRACache())
    }
}

extension DecoderLayer {
    /// out [rows, H] += ffn(x), x = ln2 [rows, H]:
    ///   dense:   SwiGLU MLP (+ LoRA)
    ///   experts: router logits [rows, E] = x' Wr^T (+ LoRA) (+ br), x' = x (* jitter factors
    ///            while training); top-k routing; out += sum_k w_k expert_k(x');
    ///            + the shared expert of x (gated or not)
    /// `options` say whether jitter and noise apply (training); `statistics` records the
    /// routing (forward only); valid [rows] marks non-padding tokens.
    package func feedForwardSublayer(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                             adapters set: AdapterSet?, layerAdapters ad: LayerAdapters, buffers f: FeedForwardBuffers,
                             options o: MoEOptions, valid: UnsafePointer<Bool>, statistics: RoutingStatistics?) {
        let c = config, h = c.hiddenSize, l = index
        switch ffn {
        case let .dense(mlp):
            feedForward(out: out, x: x, rows: n, weights: mlp, adapters: ad.mlp, cache: f.cache,
                        gate: f.gate!, up: f.up!, act: f.act, accumulate: true, path: products)
        case let .experts(base, sharedExpert):
            guard let r = f.routing, let scratch = f.experts else { return }
            var xm = x
            if o.training, o.jitter > 0, let factors = f.jitter, let jittered = f.moeInput {
                // Mixtral's router jitter: the block input times uniform(1 - eps, 1 + eps).
                var rng = SplitMix64(seed: mixBits(o.seed ^ UInt64(o.step) &* 0x5851_F42D ^ UInt64(l) &* 0x14057B7E))
                let eps = o.jitter
                for i in 0..<(n * h) {
                    factors[i] = 1 - eps + 2 * eps * rng.nextFloat()
                    jittered[i] = x[i] * factors[i]
                }
                xm = UnsafePointer(jittered.pointer)
            }
            let router = set?.trainedRouter(layer: l) ?? base
            linearForward(y: r.logits.pointer, x: xm, rows: n, weight: router, path: products)
            if let lr = ad.router { loraForward(y: r.logits.pointer, x: xm, rows: n, adapter: lr, u: f.uRouter!) }
            biasForward(y: r.logits.pointer, rows: n, bias: weights.routerBias, cols: c.numExperts)
            if o.training, o.learnedNoise, let wn = set?.noiseWeight(layer: l) {
                linearForward(y: r.noisePre.pointer, x: xm, rows: n, weight: wn)
            }
            r.route(tokens: n, valid: valid, options: o, layer: l)
            moeForward(out: out, x: xm, tokens: n, hidden: h, experts: weights.experts,
                       adapters: ad.experts, cache: f.cache, routing: r, scratch: scratch, path: products,
                       outputNorms: o.expertOutputNorms ? r.outputNormSum : nil)
            statistics?.record(layer: l, from: r)
            if let se = sharedExpert, let sa = f.shared {
                sharedExpertForward(out: out, x: x, rows: n, hidden: h, weights: se, gate: weights.sharedExpertGate,
                                    adapters: ad.shared, cache: f.sharedCache, acts: sa, act: f.act, path: products)
            }
        }
    }

    /// Backward of feedForwardSublayer: dx [N, H] = d ln2 through the MLP, or the experts,
    /// the router (moeBackward, Model/Backward.swift) and the shared expert; adapter, trained
    /// router and noise weight gradients accumulate. dy [N, H] = d out (already times r).
    package func feedForwardSublayerBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                     rows n: Int, model: Transformer, adapters set: AdapterSet, acts a: LayerActivations,
                                     state s: ForwardState, grads g: BackwardState, auxScale: Float) {
        let l = index, ad = set.layers[l], u = a.lora, du = g.du.pointer
        switch ffn {
        case let .dense(mlp):
            feedForwardBackward(dx: dx, dy: dy, x: x, rows: n,
                                weights: mlp, adapters: ad.mlp, cache: u?.ffn ?? FeedForwardLoRACache(),
                                gate: a.gate!.pointer, up: a.up!.pointer,
                                dgate: g.dgate.pointer, dup: g.dup.pointer, du: du, accumulate: false)
        case let .experts(router, sharedExpert):
            model.moeBackward(layer: l, dx: dx, dy: dy, x: x, tokens: n,
                              router: set.trainedRouter(layer: l) ?? router, trained: set.routers[l],
                              noise: set.noiseWeights[l],
                              adapters: ad, acts: a, state: s, grads: g, auxScale: auxScale)
            if let se = sharedExpert, let sa = a.shared, let ds = g.dshared, let dz = g.dsharedGate {
                sharedExpertBackward(dx: dx, dy: dy, x: x, rows: n, hidden: config.hiddenSize,
                                     weights: se, gate: weights.sharedExpertGate, adapters: ad.shared,
                                     cache: u?.sharedFFN ?? FeedForwardLoRACache(), acts: sa,
                                     ds: ds.pointer, dz: dz.pointer, dgate: g.dgate.pointer, dup: g.dup.pointer, du: du)
            }
        }
    }
}
