/// The forward pass of the decoder over a TokenBatch, writing every activation into a
/// ForwardState. With adapters, each adapted linear adds its LoRA update.
/// Returns the summed next-token loss and the number of counted tokens.
extension Transformer {
    @discardableResult
    public func forward(_ batch: TokenBatch, state s: ForwardState, adapters: AdapterSet? = nil) throws -> (sum: Double, count: Int) {
        let c = config
        guard s.fits(batch) else {
            throw MoETuneError.invalid("internal: batch \(batch.batch)x\(batch.seq) exceeds the forward state's capacity \(s.batchCapacity)x\(s.seqCapacity)")
        }
        if let adapters, adapters.maxRank > 0, s.loraRank < adapters.maxRank {
            throw MoETuneError.invalid("internal: forward state has no room for LoRA rank \(adapters.maxRank)")
        }
        // Packed rows may be longer than the model's positions; their examples may not.
        let longest = batch.positions.map { Int($0.max() ?? 0) + 1 } ?? batch.seq
        guard longest <= rope.maxPositions else {
            throw MoETuneError.invalid("sequence length \(longest) exceeds max_position_embeddings \(rope.maxPositions)")
        }
        let b = batch.batch, t = batch.seq, n = b * t, h = c.hiddenSize
        for i in 0..<n {
            let id = batch.ids[i]
            guard id >= 0, Int(id) < c.vocabSize else {
                throw MoETuneError.invalid("token id \(id) is outside the model's vocabulary of \(c.vocabSize)")
            }
            s.ids[i] = id
            s.targets[i] = batch.targets[i]
        }
        s.batch = b
        s.seq = t
        for i in 0..<b { for j in 0..<t { s.valid[i * t + j] = j < batch.lengths[i] } }
        s.packed = batch.positions != nil
        if let p = batch.positions { for i in 0..<n { s.positionBuffer[i] = p[i] } }
        let positions = s.positions
        embeddingForward(out: s.residualIn(0).pointer, ids: s.ids, count: n, table: embed)
        // Granite: embeddings [N, H] times embedding_multiplier (frozen: no backward).
        if c.embeddingMultiplier != 1 { scaleInPlace(s.residualIn(0).pointer, count: n * h, by: c.embeddingMultiplier) }
        for (l, w) in layers.enumerated() {
            let a = s.layer(l)
            let ad = adapters?.layers[l] ?? LayerAdapters()
            let u = a.lora
            let x = s.residualIn(l).pointer, mid = s.midBuffer(l).pointer, out = s.residualOut(l).pointer
            // Attention block: mid = x + r * o_proj(attention(rope(q), rope(k), v)), r = residual_multiplier.
            rmsnormForward(out: a.ln1.pointer, rstd: a.rstd1.pointer, x: x, weight: w.inputNorm,
                           rows: n, cols: h, eps: c.rmsNormEps)
            if let m = c.mla, let ma = a.mla, let mw = w.mlaWeights {
                // DeepSeek-V2: q, k, v [N, nH*D] from the latent attention's projections.
                mlaForward(q: a.q.pointer, k: a.k.pointer, v: a.v.pointer, x: a.ln1.pointer, rows: n, seq: t,
                           heads: c.numHeads, shape: m, weights: mw,
                           adapters: MLAAdapters(q: ad.q, kvA: ad.k, kvB: ad.v, uq: u?.q.pointer, ukvA: u?.k.pointer, ukvB: u?.v.pointer),
                           acts: ma, rope: rope, positions: positions)
            } else {
            linearForward(y: a.q.pointer, x: a.ln1.pointer, rows: n, weight: w.q)
            if let l = ad.q { loraForward(y: a.q.pointer, x: a.ln1.pointer, rows: n, adapter: l, u: u!.q.pointer) }
            linearForward(y: a.k.pointer, x: a.ln1.pointer, rows: n, weight: w.k)
            if let l = ad.k { loraForward(y: a.k.pointer, x: a.ln1.pointer, rows: n, adapter: l, u: u!.k.pointer) }
            linearForward(y: a.v.pointer, x: a.ln1.pointer, rows: n, weight: w.v)
            if let l = ad.v { loraForward(y: a.v.pointer, x: a.ln1.pointer, rows: n, adapter: l, u: u!.v.pointer) }
            biasForward(y: a.q.pointer, rows: n, bias: w.qBias, cols: c.qDim)
            biasForward(y: a.k.pointer, rows: n, bias: w.kBias, cols: c.kvDim)
            biasForward(y: a.v.pointer, rows: n, bias: w.vBias, cols: c.kvDim)
            if let qn = w.qNorm, let kn = w.kNorm, let qRaw = a.qRaw, let kRaw = a.kRaw {
                // q/k RMSNorm before RoPE: q_raw [N, nH*D] → q, rows and width per c.qkNorm.
                let qs = c.qkNormShape(tokens: n, heads: c.numHeads), ks = c.qkNormShape(tokens: n, heads: c.numKVHeads)
                qRaw.pointer.update(from: a.q.pointer, count: n * c.qDim)
                kRaw.pointer.update(from: a.k.pointer, count: n * c.kvDim)
                rmsnormForward(out: a.q.pointer, rstd: a.qRstd!.pointer, x: qRaw.pointer, weight: qn,
                               rows: qs.rows, cols: qs.cols, eps: c.rmsNormEps)
                rmsnormForward(out: a.k.pointer, rstd: a.kRstd!.pointer, x: kRaw.pointer, weight: kn,
                               rows: ks.rows, cols: ks.cols, eps: c.rmsNormEps)
            }
            if let clip = c.clipQKV {
                // OLMoE: q, k (after their norm) and v clamped before RoPE; the values before
                // the clamp are kept for its backward.
                if let cq = a.qClip, let ck = a.kClip {
                    cq.pointer.update(from: a.q.pointer, count: n * c.qDim)
                    ck.pointer.update(from: a.k.pointer, count: n * c.kvDim)
                }
                clampForward(a.q.pointer, count: n * c.qDim, limit: clip)
                clampForward(a.k.pointer, count: n * c.kvDim, limit: clip)
                if let cv = a.vClip { cv.pointer.update(from: a.v.pointer, count: n * c.kvDim) }
                clampForward(a.v.pointer, count: n * c.kvDim, limit: clip)
            }
            rope.forward(a.q.pointer, batch: b, seq: t, heads: c.numHeads, positions: positions)
            rope.forward(a.k.pointer, batch: b, seq: t, heads: c.numKVHeads, positions: positions)
            } // MLA or q/k/v (left unindented to keep this merge-friendly)
            attentionForward(out: a.attn.pointer, q: a.q.pointer, k: a.k.pointer, v: a.v.pointer,
                             scratch: s.attnScratch.pointer, shape: c.attentionShape(batch: b, seq: t, layer: l), positions: positions,
                             sinks: w.sinks)
            // MLA: the heads' value parts [N, nH*vD], o_proj's input.
            if let m = c.mla { mlaCompactOutput(a.attn.pointer, rows: n, heads: c.numHeads, shape: m) }
            attentionResidual(mid: mid, x: x, attn: a.attn.pointer, rows: n, weight: w.o, adapter: ad.o,
                              u: u?.o.pointer, scratch: a.ln2.pointer, bias: w.oBias)
            // Feed-forward block: out = mid + r * ffn(norm(mid)); with r != 1 the block
            // accumulates into out = 0 and out = mid + r * out after it.
            rmsnormForward(out: a.ln2.pointer, rstd: a.rstd2.pointer, x: mid, weight: w.postAttentionNorm,
                           rows: n, cols: h, eps: c.rmsNormEps)
            if c.residualMultiplier != 1 { out.update(repeating: 0, count: n * h) } else { out.update(from: mid, count: n * h) }
            let ffnCache = u?.ffn ?? FeedForwardLoRACache()
            if let mlp = w.mlp {
                feedForward(out: out, x: a.ln2.pointer, rows: n, weights: mlp, adapters: ad.mlp, cache: ffnCache,
                            gate: a.gate!.pointer, up: a.up!.pointer, act: s.act.pointer, accumulate: true)
            } else if let base = w.router, let r = a.routing, let scratch = a.experts {
                var xm = UnsafePointer(a.ln2.pointer)
                if moe.training, moe.jitter > 0, let factors = a.jitter, let jittered = a.moeInput {
                    // Mixtral's router jitter: the block input times uniform(1 - eps, 1 + eps).
                    var rng = SplitMix64(seed: mixBits(moe.seed ^ UInt64(moe.step) &* 0x5851_F42D ^ UInt64(l) &* 0x14057B7E))
                    let eps = moe.jitter
                    for i in 0..<(n * h) {
                        factors[i] = 1 - eps + 2 * eps * rng.nextFloat()
                        jittered[i] = a.ln2[i] * factors[i]
                    }
                    xm = UnsafePointer(jittered.pointer)
                }
                let router = adapters?.trainedRouter(layer: l) ?? base
                linearForward(y: r.logits.pointer, x: xm, rows: n, weight: router)
                if let lr = ad.router { loraForward(y: r.logits.pointer, x: xm, rows: n, adapter: lr, u: u!.router.pointer) }
                biasForward(y: r.logits.pointer, rows: n, bias: w.routerBias, cols: c.numExperts)
                if moe.training, moe.learnedNoise, let wn = adapters?.noiseWeight(layer: l) {
                    linearForward(y: r.noisePre.pointer, x: xm, rows: n, weight: wn)
                }
                r.route(tokens: n, valid: s.valid, options: moe, layer: l)
                s.routing?.record(layer: l, from: r)
                moeForward(out: out, x: xm, tokens: n, hidden: h, experts: w.experts,
                           adapters: ad.experts, cache: ffnCache, routing: r, scratch: scratch)
                if let se = w.sharedExpert, let sa = a.shared {
                    sharedExpertForward(out: out, x: a.ln2.pointer, rows: n, hidden: h, weights: se, gate: w.sharedExpertGate,
                                        adapters: ad.shared, cache: u?.sharedFFN ?? FeedForwardLoRACache(),
                                        acts: sa, act: s.act.pointer)
                }
            }
            if c.residualMultiplier != 1 { scaledResidual(out, base: mid, count: n * h, scale: c.residualMultiplier) }
        }
        if c.isMoE { computeAuxiliaryLosses(s) }
        rmsnormForward(out: s.lnF.pointer, rstd: s.rstdF.pointer, x: s.residualIn(c.numLayers).pointer,
                       weight: finalNorm, rows: n, cols: h, eps: c.rmsNormEps)
        // Head and loss over m rows: all N, or only the scored ones (s.scoredOnly).
        let m = s.selectHeadRows(tokens: n, hidden: h)
        linearForward(y: s.logits.pointer, x: s.lnF.pointer, rows: m, weight: lmHead)
        if let l = adapters?.head { loraForward(y: s.logits.pointer, x: s.lnF.pointer, rows: m, adapter: l, u: s.headLoRA!.pointer) }
        // Granite: logits [m, V] divided by logits_scaling.
        if c.logitsScaling != 1 { divideInPlace(s.logits.pointer, count: m * c.vocabSize, by: c.logitsScaling) }
        return crossEntropyForward(losses: s.losses.pointer, logits: s.logits.pointer, targets: s.headTargets,
                                   rows: m, vocab: c.vocabSize)
    }

    /// mid [N, H] = x + r * (attn [N, nH*D] Wo^T (+ LoRA)), r = residual_multiplier; with
    /// r != 1 o_proj's output is written to scratch [N, H] first. The forward pass and the
    /// backward pass's recomputation of mid both use it.
    func attentionResidual(mid: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, attn: UnsafePointer<Float>,
                           rows n: Int, weight: Matrix, adapter: LoRAAdapter?, u: UnsafeMutablePointer<Float>?,
                           scratch: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>? = nil) {
        let h = config.hiddenSize, r = config.residualMultiplier
        let y = r == 1 ? mid : scratch
        if r == 1 { mid.update(from: x, count: n * h) }
        linearForward(y: y, x: attn, rows: n, weight: weight, accumulate: r == 1)
        if let adapter, let u { loraForward(y: y, x: attn, rows: n, adapter: adapter, u: u) }
        biasForward(y: y, rows: n, bias: bias, cols: h)  // GPT-OSS's o_proj bias
        if r != 1 {
            mid.update(from: x, count: n * h)
            for i in 0..<(n * h) { mid[i] += r * scratch[i] }
        }
    }

    /// The load-balancing loss as transformers' load_balancing_loss_func computes it for
    /// top-k routing over all layers at once (padding excluded):
    ///   aux = E * sum_e F_e * P_e,  F_e = assignments to e / rows,  P_e = mean router probability of e,
    /// rows = valid tokens x layers; and the ST-MoE z-loss, mean over rows of logsumexp(logits)^2.
    func computeAuxiliaryLosses(_ s: ForwardState) {
        guard let st = s.routing else { return }
        let e = config.numExperts
        let rows = st.tokens.reduce(0, +)
        s.auxRows = rows
        guard rows > 0 else { s.auxLoss = 0; s.zLoss = 0; return }
        var aux = 0.0
        for j in 0..<e {
            var selected = 0.0, prob = 0.0
            for l in 0..<config.numLayers { selected += st.selected[l * e + j]; prob += st.probSum[l * e + j] }
            s.auxFraction[j] = Float(selected / Double(rows))
            aux += selected / Double(rows) * prob / Double(rows)
        }
        s.auxLoss = Double(e) * aux
        s.zLoss = st.zSum.reduce(0, +) / Double(rows)
    }
}
