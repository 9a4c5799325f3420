import Foundation
import MoEFormats
import MoEText

/// Gradient buffers of a backward pass, allocated once for the capacity of a
/// ForwardState (training mode) and reused for every step.
public final class BackwardState {
    package let dres: FloatBuffer      // [N, H] gradient of the residual stream, running downward
    package let dln: FloatBuffer       // [N, H] gradient of a norm's output
    package let dq: FloatBuffer        // [N, nH*D]
    package let dk: FloatBuffer        // [N, nKV*D]
    package let dv: FloatBuffer        // [N, nKV*D]
    package let dattn: FloatBuffer     // [N, nH*D]
    package let dqkRaw: FloatBuffer?   // [N, nH*D] gradient before the q/k norm (with q/k norms only)
    package let dgate: FloatBuffer     // [rows, I] rows = N (dense) or N*k (experts); first holds d act
    package let dup: FloatBuffer       // [rows, I]; first holds the recomputed act
    package let dshared: FloatBuffer?      // [N, H] d of the shared expert's output (Qwen2-MoE)
    package let dsharedGate: FloatBuffer?  // [N] d of its gate logit
    package let dtopWeight: FloatBuffer?   // [N, k]
    package let expertDots: FloatBuffer?   // [N*k] <d act, act> of each assignment (the routing weight's gradient times the weight)
    package let drouter: FloatBuffer?      // [N, E] gradient of the router logits
    package let dnoise: FloatBuffer?       // [N, E] gradient of the learned noise-scale pre-activation
    package let attnScratch: FloatBuffer   // [cores, 2, T, T]
    package let du: FloatBuffer        // [rows, r] LoRA scratch
    package let dscaled: FloatBuffer?  // [N, H] r * d of a residual add, r = residual_multiplier != 1 (Granite)
    package let mla: MLAGradients?     // DeepSeek-V2's latent attention

    public init(for s: ForwardState, config c: ModelConfig) {
        let n = s.batchCapacity * s.seqCapacity, h = c.hiddenSize
        let rows = c.isMoE ? n * c.expertsPerToken : n
        dres = FloatBuffer(count: n * h)
        dln = FloatBuffer(count: n * h)
        dq = FloatBuffer(count: n * c.qDim)
        dk = FloatBuffer(count: n * c.kvDim)
        dv = FloatBuffer(count: n * c.kvDim)
        dattn = FloatBuffer(count: n * c.qDim)
        dqkRaw = c.qkNorm != nil ? FloatBuffer(count: n * c.qDim) : nil
        dgate = FloatBuffer(count: c.feedForwardScratch(tokens: n))
        dup = FloatBuffer(count: c.feedForwardScratch(tokens: n))
        dshared = c.sharedExpertIntermediateSize > 0 ? FloatBuffer(count: n * h) : nil
        dsharedGate = c.sharedExpertIntermediateSize > 0 ? FloatBuffer(count: n) : nil
        dtopWeight = c.isMoE ? FloatBuffer(count: n * c.expertsPerToken) : nil
        expertDots = c.isMoE ? FloatBuffer(count: rows) : nil
        drouter = c.isMoE ? FloatBuffer(count: n * c.numExperts) : nil
        dnoise = c.isMoE ? FloatBuffer(count: n * c.numExperts) : nil
        attnScratch = FloatBuffer(count: BLAS.cores * 2 * s.seqCapacity * s.seqCapacity)
        du = FloatBuffer(count: max(rows, n) * max(s.loraRank, 1))
        dscaled = c.residualMultiplier != 1 ? FloatBuffer(count: n * h) : nil
        mla = c.mla.map { MLAGradients(tokens: n, heads: c.numHeads, shape: $0) }
    }
}

extension Transformer {
    /// Backward pass of the last `forward` on `s` (a training-mode state): accumulates
    /// (+=) the gradient of lossScale * (summed token loss) into the adapters' gradient
    /// buffers. Gradients flow through every frozen weight to the inputs; none is
    /// computed for a frozen weight. For a mean loss, lossScale = 1 / counted tokens.
    /// With MoE, the auxiliary losses of the forward pass (moe.auxLossCoef * aux +
    /// moe.zLossCoef * z) join the objective, times auxScale (1 / grad_accum).
    public func backward(state s: ForwardState, adapters: AdapterSet, grads g: BackwardState, lossScale: Float,
                         auxScale: Float = 1) {
        precondition(s.keepsAllLayers, "backward needs a training-mode ForwardState")
        let c = config
        let b = s.batch, t = s.seq, n = b * t, h = c.hiddenSize
        let du = g.du.pointer

        // Loss and head (Model/Head.swift): d lnF of the head's m rows (compact) into dln.
        headBackward(s, adapters: adapters, dln: g.dln.pointer, du: du, lossScale: lossScale)
        // d lnF [N, H]: the compact rows back to their positions, 0 where unscored.
        s.expandHeadRows(g.dln.pointer, tokens: n, hidden: h)
        g.dres.zero()
        rmsnormBackward(dx: g.dres.pointer, dy: g.dln.pointer, x: s.residualIn(c.numLayers).pointer,
                        weight: finalNorm, rstd: s.rstdF.pointer, rows: n, cols: h)

        // No backward below the lowest layer that trains anything (the embedding is frozen),
        // and in that layer no gradient for its input.
        let lowest = lowestTrainedLayer(adapters)
        for l in stride(from: c.numLayers - 1, through: lowest, by: -1) {
            // The layer's walk backward (Model/DecoderLayer.swift), each sublayer's backward
            // beside its forward there.
            let layer = decoderLayer(l), w = layer.weights, a = s.layer(l), ad = adapters.layers[l]
            let x = s.residualIn(l).pointer, mid = s.midBuffer(l).pointer
            // Recomputation: the layer's forward again from its input into the one set of layer
            // activations (out overwrites residual[l + 1], no longer read), ln1, mid, ln2 included.
            let recomputed = s.recomputesLayers
            if recomputed { layerForward(l, state: s, adapters: adapters, statistics: nil) }
            // Feed-forward block: out = mid + r * ffn(ln2(mid)); dres holds d out [N, H], d ffn =
            // r * d out. Else mid and ln2 (shared) are recomputed: mid = x + r * o_proj(attn), ln2 = norm(mid).
            if !recomputed {
                layer.attentionOutput(mid: mid, x: x, attn: a.attn.pointer, rows: n, adapter: ad.o,
                                      u: a.lora?.o.pointer, scratch: a.ln2.pointer)
                rmsnormForward(out: a.ln2.pointer, rstd: a.rstd2.pointer, x: mid, weight: w.postAttentionNorm,
                               rows: n, cols: h, eps: c.rmsNormEps)
            }
            let dffn = layer.scaledGradient(g.dres.pointer, count: n * h, scaled: g.dscaled)
            layer.feedForwardSublayerBackward(dx: g.dln.pointer, dy: dffn, x: a.ln2.pointer, rows: n, model: self,
                                              adapters: adapters, acts: a, state: s, grads: g, auxScale: auxScale)
            rmsnormBackward(dx: g.dres.pointer, dy: g.dln.pointer, x: mid,
                            weight: w.postAttentionNorm, rstd: a.rstd2.pointer, rows: n, cols: h)
            // Attention block: mid = x + r * o_proj(attn); dres now holds d mid [N, H].
            layer.attentionOutputBackward(dattn: g.dattn.pointer, dmid: g.dres.pointer, attn: a.attn.pointer, rows: n,
                                          adapter: ad.o, u: a.lora?.o.pointer, grads: g)
            attentionBackward(dq: g.dq.pointer, dk: g.dk.pointer, dv: g.dv.pointer, dout: g.dattn.pointer,
                              q: a.q.pointer, k: a.k.pointer, v: a.v.pointer,
                              scratch: g.attnScratch.pointer, shape: layer.attentionShape(batch: b, seq: t), positions: s.positions,
                              sinks: layer.sinks)
            if !recomputed, ad.q != nil || ad.k != nil || ad.v != nil {
                // The adapters' input ln1 is shared between layers: recompute this layer's.
                rmsnormForward(out: a.ln1.pointer, rstd: a.rstd1.pointer, x: x, weight: w.inputNorm,
                               rows: n, cols: h, eps: c.rmsNormEps)
            }
            // d ln1 [N, H] is needed only by the layers below.
            if layer.attentionInputsBackward(dx: g.dln.pointer, x: a.ln1.pointer, rows: n, batch: b, seq: t,
                                             positions: s.positions, adapters: ad, acts: a.attentionInputs, grads: g,
                                             rope: rope, inputGradient: l > lowest) {
                rmsnormBackward(dx: g.dres.pointer, dy: g.dln.pointer, x: x,
                                weight: w.inputNorm, rstd: a.rstd1.pointer, rows: n, cols: h)
            }
        }
        // The embedding is frozen: the gradient stops here.
    }

    /// The lowest layer with a trained parameter (an adapter, a router trained in full or a
    /// learned noise weight); numLayers when only the head is adapted.
    package func lowestTrainedLayer(_ adapters: AdapterSet) -> Int {
        for l in 0..<config.numLayers {
            let ad = adapters.layers[l]
            let ffn = { (f: FeedForwardAdapters) in !f.isEmpty }
            if ad.q != nil || ad.k != nil || ad.v != nil || ad.o != nil || ad.router != nil
                || ffn(ad.mlp) || ffn(ad.shared) || ad.experts.contains(where: ffn)
                || adapters.trainedRouter(layer: l) != nil || adapters.noiseWeight(layer: l) != nil {
                return l
            }
        }
        return config.numLayers
    }

    /// Backward of the Mixtral MoE block (top-k renormalised routing, optional capacity,
    /// jitter and noise) and of the auxiliary losses' share in this layer.
    /// dy [N, H] = d out; writes dx [N, H] = d ln2 (through the experts and the router).
    package func moeBackward(layer l: Int, dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                             x ln2: UnsafePointer<Float>, tokens n: Int, router: Matrix, trained: TrainedRouter?,
                             noise learnedNoise: TrainedRouter?,
                             adapters ad: LayerAdapters, acts a: LayerActivations, state s: ForwardState,
                             grads g: BackwardState, auxScale: Float) {
        let c = config, h = c.hiddenSize, k = c.expertsPerToken
        let r = a.routing!, sc = a.experts!
        let jittered = moe.training && moe.jitter > 0 && a.moeInput != nil
        let x = jittered ? UnsafePointer(a.moeInput!.pointer) : ln2
        // d ye [N*k, H] (then d xe over it), d top weights [N, k].
        g.dtopWeight!.pointer.update(repeating: 0, count: n * k)
        expertOutputGradients(sc.ye.pointer, dy: dy, routing: r, hidden: h)
        gatherExpertInputs(sc.xe.pointer, x: x, hidden: h, routing: r)
        expertsBackward(layer: l, dy: dy, routing: r, scratch: sc, adapters: ad, acts: a, state: s, grads: g)
        // dx [N, H] = sum of each token's d xe rows.
        scatterExpertGradients(dx, UnsafePointer(sc.ye.pointer), routing: r, tokens: n, hidden: h)
        // d router logits [N, E], then the router's inputs and trained weights.
        routerLogitGradients(routing: r, tokens: n, state: s, grads: g, auxScale: auxScale)
        routerInputBackward(dx: dx, x: x, tokens: n, router: router, trained: trained, noise: learnedNoise,
                            adapters: ad, acts: a, grads: g)
        if jittered, let factors = a.jitter {
            // The block saw ln2 * factors: d ln2 = d input * factors.
            for i in 0..<(n * h) { dx[i] *= factors[i] }
        }
    }

    /// d ye [N*k, H] of every assignment: out[token] += w * ye[a], so dye[a] = w * dy[token].
    /// d ye overwrites the expert outputs ye (shared by all layers and not kept; an expert's
    /// backward reads its rows of d ye before it writes d xe over them).
    package func expertOutputGradients(_ dye: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                       routing r: RoutingBuffers, hidden h: Int) {
        let k = config.expertsPerToken
        parallelChunks(r.assignCount, minChunk: 64) { range in
            for asg in range {
                let token = Int(r.assignToken[asg]), slot = Int(r.assignSlot[asg])
                let wgt = r.topWeight[token * k + slot]
                let src = dy + token * h, d = dye + asg * h
                for j in 0..<h { d[j] = wgt * src[j] }
            }
        }
    }

    /// Each expert's feed-forward backward over its gathered rows: d xe [N*k, H] over d ye,
    /// its adapters' gradients, and the gradient of each assignment's routing weight into
    /// grads.dtopWeight [N, k]. dw = <dy[token], ye[a]>, which the expert's backward gives
    /// without ye: ye = act Wd^T (+ s u B^T) + b_down and d act = w * (dy Wd (+ s (dy B) A)),
    /// so <dy, ye> = <d act, act> / w + <dy, b_down>. Slots without an expert (padding, over
    /// capacity) had no effect: dw = 0.
    package func expertsBackward(layer l: Int, dy: UnsafePointer<Float>, routing r: RoutingBuffers, scratch sc: ExpertBuffers,
                                 adapters ad: LayerAdapters, acts a: LayerActivations, state s: ForwardState,
                                 grads g: BackwardState) {
        let h = config.hiddenSize, k = config.expertsPerToken
        let dye = sc.ye.pointer, dxe = sc.ye.pointer, dtw = g.dtopWeight!.pointer, dots = g.expertDots!.pointer
        let cache = a.lora?.ffn ?? FeedForwardLoRACache()
        // The experts are tasks of one parallel region, as in moeForward; each writes its own
        // rows of dxe/dgate/dup/du and its own adapter's gradients.
        let experts = layers[l].experts, rank = max(s.loraRank, 1)
        withExpertOrder(r) { order, count in
            Parallel.forEachTask(order, count: count) { ex in
                let w = experts[ex]
                let start = r.expertStart[ex], rows = r.count(of: ex)
                let inter = w.gate.rows
                let ead = ad.experts.isEmpty ? FeedForwardAdapters() : ad.experts[ex]
                feedForwardBackward(dx: dxe + start * h, dy: dye + start * h, x: sc.xe.pointer + start * h, rows: rows,
                                    weights: w, adapters: ead, cache: cache.offset(row: start, adapters: ead),
                                    gate: sc.gate.pointer + start * inter, up: sc.up.pointer + start * inter,
                                    dgate: g.dgate.pointer + start * inter, dup: g.dup.pointer + start * inter,
                                    du: g.du.pointer + start * rank, accumulate: false, outputDots: dots + start)
                // dw of each of this expert's assignments (a weight too small to divide by
                // had no effect worth a gradient: 0, as for a dropped slot).
                for asg in start..<(start + rows) {
                    let token = Int(r.assignToken[asg]), slot = Int(r.assignSlot[asg])
                    let wgt = r.topWeight[token * k + slot]
                    var dw = wgt.magnitude >= 0x1p-100 ? dots[asg] / wgt : 0
                    if let b = w.downBias {
                        let src = dy + token * h
                        for j in 0..<h { dw += src[j] * b[j] }
                    }
                    dtw[token * k + slot] = dw
                }
            }
        }
    }

    /// dx [N, H] = the sum over each token's assignments of d xe [N*k, H]. Workers split the
    /// hidden columns (two assignments may share a token).
    package func scatterExpertGradients(_ dx: UnsafeMutablePointer<Float>, _ dxe: UnsafePointer<Float>,
                                        routing r: RoutingBuffers, tokens n: Int, hidden h: Int) {
        let total = r.assignCount
        dx.update(repeating: 0, count: n * h)
        parallelChunks(h, minChunk: 64) { cols in
            for asg in 0..<total {
                let token = Int(r.assignToken[asg])
                let src = dxe + asg * h, dst = dx + token * h
                for j in cols { dst[j] += src[j] }
            }
        }
    }

    /// grads.drouter [N, E] = d router logits from grads.dtopWeight [N, k]. Router: w_s = p_s / S
    /// over the selected experts, p = softmax(logits (+ noise)). The load-balancing loss adds
    /// coef * E * F_e / rows to d p_e of every valid token (F, the assignment shares, are
    /// constants: top-k is not differentiable); the z-loss adds coef * 2 * lse * p_j / rows to
    /// d logit_j.
    package func routerLogitGradients(routing r: RoutingBuffers, tokens n: Int, state s: ForwardState,
                                      grads g: BackwardState, auxScale: Float) {
        let k = config.expertsPerToken, e = config.numExperts
        let dlog = g.drouter!.pointer, dtw = g.dtopWeight!.pointer
        let rows = Float(max(s.auxRows, 1))
        let auxCoef = moe.auxLossCoef * auxScale, zCoef = moe.zLossCoef * auxScale
        let auxGrad = UnsafePointer(s.auxFraction.pointer)
        let valid = UnsafePointer(s.valid)
        parallelChunks(n, minChunk: 64) { range in
            for i in range {
                let p = r.probs.pointer + i * e, te = r.topExpert + i * k, tw = r.topWeight.pointer + i * k
                let dl = dlog + i * e
                var sel: Float = 0, wdot: Float = 0
                for s in 0..<k { sel += p[Int(te[s])]; wdot += dtw[i * k + s] * tw[s] }
                for j in 0..<e { dl[j] = 0 }
                // routed_scaling_factor c: w_s = c * p_s (/ S): d p_s carries c.
                let c = r.scale
                if r.normalize {
                    for s in 0..<k { dl[Int(te[s])] = (c * dtw[i * k + s] - wdot) / sel }
                } else {
                    // w_s = c * p_s: d p_s = c * d w_s.
                    for s in 0..<k { dl[Int(te[s])] = c * dtw[i * k + s] }
                }
                if auxCoef != 0, valid[i] {
                    for j in 0..<e { dl[j] += auxCoef * Float(e) * auxGrad[j] / rows }
                }
                var dot: Float = 0
                for j in 0..<e { dot += p[j] * dl[j] }
                for j in 0..<e { dl[j] = p[j] * (dl[j] - dot) }
                if zCoef != 0, valid[i] {
                    let lse = r.lse[i]
                    for j in 0..<e { dl[j] += zCoef * 2 * lse * p[j] / rows }
                }
            }
        }
    }

    /// From grads.drouter [N, E] (d logits): the learned noise weight's and a trained router's
    /// gradients, and dx [N, H] += d logits through the router (and its adapter) and the noise
    /// weight. x [N, H]: the router's input.
    package func routerInputBackward(dx: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, tokens n: Int, router: Matrix,
                                     trained: TrainedRouter?, noise learnedNoise: TrainedRouter?,
                                     adapters ad: LayerAdapters, acts a: LayerActivations, grads g: BackwardState) {
        let h = config.hiddenSize, e = config.numExperts, r = a.routing!
        let dlog = g.drouter!.pointer
        if moe.training, moe.learnedNoise, moe.noiseStd > 0, let wn = learnedNoise {
            // logits' = logits + z * c * softplus(a), a = x W_noise^T:
            // d a = d logits' * z * c * sigmoid(a); dW_noise += da^T x; dx += da W_noise.
            let da = g.dnoise!.pointer, z = r.noise.pointer, a = r.noisePre.pointer
            let cst = moe.noiseStd / Float(M_LN2)
            for i in 0..<(n * e) { da[i] = dlog[i] * z[i] * cst / (1 + Foundation.exp(-a[i])) }
            BLAS.gemm(.transpose, .none, m: e, n: h, k: n, a: da, lda: e, b: x, ldb: h, beta: 1, c: wn.grad, ldc: h)
            linearBackwardInput(dx: dx, dy: da, rows: n, weight: Matrix(wn.weight, rows: e, cols: h), accumulate: true)
        }
        if let t = trained {
            // d W_router [E, H] += dlogits^T x
            BLAS.gemm(.transpose, .none, m: e, n: h, k: n, a: dlog, lda: e, b: x, ldb: h, beta: 1, c: t.grad, ldc: h)
        }
        linearBackwardInput(dx: dx, dy: dlog, rows: n, weight: router, accumulate: true)
        if let lr = ad.router {
            loraBackward(dx: dx, dy: dlog, x: x, rows: n, adapter: lr, u: a.lora!.router.pointer, du: g.du.pointer)
        }
    }
}

/// Backward of feedForward: dx [N, H] (+)= d input through down, SwiGLU, gate and up,
/// with each adapter's gradients accumulated. dy [N, H] = d out. `dgate` first holds
/// d act and `dup` the recomputed act (silu(gate) * up, the down adapter's input), so no
/// per-layer copy of act is kept. dx may be dy (the MoE backward passes its d ye rows as
/// both): dy is read only before dx is written. `outputDots` [N]: also <d act, act> of each
/// row (the MoE backward's routing-weight gradient, with no copy of the output kept); for
/// SwiGLU that is <d up, up>, as d up = d act * silu(gate).
package func feedForwardBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                         rows n: Int, weights w: FeedForwardWeights, adapters ad: FeedForwardAdapters,
                         cache: FeedForwardLoRACache,
                         gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                         dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                         du: UnsafeMutablePointer<Float>, accumulate: Bool, outputDots: UnsafeMutablePointer<Float>? = nil) {
    let count = n * w.gate.rows, inter = w.gate.rows
    let dact = dgate
    linearBackwardInput(dx: dact, dy: dy, rows: n, weight: w.down, accumulate: false)
    if let l = ad.down {
        if let cl = w.clamped {
            cl.forward(out: dup, gate: gate, up: up, count: count)
        } else {
            swigluForward(out: dup, gate: gate, up: up, count: count)
        }
        loraBackward(dx: dact, dy: dy, x: dup, rows: n, adapter: l, u: cache.down!, du: du)
    }
    // In place: dgate overwrites d act element by element. GPT-OSS: the clamped SwiGLU (the
    // frozen biases were added to gate and up in the forward pass; they need no gradient).
    if let cl = w.clamped {
        if let dots = outputDots {
            // <d act, act> with act recomputed (into dup, unless the down adapter did).
            if ad.down == nil { cl.forward(out: dup, gate: gate, up: up, count: count) }
            rowDots(dots, UnsafePointer(dact), UnsafePointer(dup), rows: n, cols: inter)
        }
        cl.backward(dgate: dgate, dup: dup, dout: dact, gate: gate, up: up, count: count)
    } else {
        swigluBackward(dgate: dgate, dup: dup, dout: dact, gate: gate, up: up, count: count)
        if let dots = outputDots { rowDots(dots, UnsafePointer(dup), up, rows: n, cols: inter) }
    }
    linearBackwardInput(dx: dx, dy: dgate, rows: n, weight: w.gate, accumulate: accumulate)
    if let l = ad.gate { loraBackward(dx: dx, dy: dgate, x: x, rows: n, adapter: l, u: cache.gate!, du: du) }
    linearBackwardInput(dx: dx, dy: dup, rows: n, weight: w.up, accumulate: true)
    if let l = ad.up { loraBackward(dx: dx, dy: dup, x: x, rows: n, adapter: l, u: cache.up!, du: du) }
}

/// dots[i] = <a_i, b_i> over the rows of a, b [rows, cols].
package func rowDots(_ dots: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, rows: Int, cols: Int) {
    for i in 0..<rows {
        var s: Float = 0
        let x = a + i * cols, y = b + i * cols
        for j in 0..<cols { s += x[j] * y[j] }
        dots[i] = s
    }
}
