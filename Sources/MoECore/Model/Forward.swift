import MoEFormats
import MoEText
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
        embeddingForward(out: s.residualIn(0).pointer, ids: s.ids, count: n, table: embed)
        // Granite: embeddings [N, H] times embedding_multiplier (frozen: no backward).
        if c.embeddingMultiplier != 1 { scaleInPlace(s.residualIn(0).pointer, count: n * h, by: c.embeddingMultiplier) }
        for l in 0..<c.numLayers { layerForward(l, state: s, adapters: adapters, statistics: s.routing) }
        if c.isMoE { computeAuxiliaryLosses(s) }
        rmsnormForward(out: s.lnF.pointer, rstd: s.rstdF.pointer, x: s.residualIn(c.numLayers).pointer,
                       weight: finalNorm, rows: n, cols: h, eps: c.rmsNormEps)
        // Head and loss over m rows: all N, or only the scored ones (s.scoredOnly).
        let m = s.selectHeadRows(tokens: n, hidden: h)
        return try headForward(s, rows: m, adapters: adapters)
    }

    /// Layer l of the forward pass over the batch in `s` (its ids, valid, positions set):
    /// residualOut(l) from residualIn(l), keeping in s.layer(l) what backward needs.
    /// `statistics` records the routing (the forward pass; nil when backward recomputes the
    /// layer, ForwardState.recomputesLayers). Model/DecoderLayer.swift has the sublayers.
    package func layerForward(_ l: Int, state s: ForwardState, adapters: AdapterSet?, statistics: RoutingStatistics?) {
        let c = config, n = s.batch * s.seq, h = c.hiddenSize
        let rows = RowPositions.batch(s.batch, s.seq, s.positions)
        let layer = decoderLayer(l), a = s.layer(l)
        let ad = adapters?.layers[l] ?? LayerAdapters()
        let x = s.residualIn(l).pointer, mid = s.midBuffer(l).pointer, out = s.residualOut(l).pointer
        // Attention block: mid = x + r * o_proj(attention(rope(q), rope(k), v)), r = residual_multiplier.
        rmsnormForward(out: a.ln1.pointer, rstd: a.rstd1.pointer, x: x, weight: layer.weights.inputNorm,
                       rows: n, cols: h, eps: c.rmsNormEps)
        layer.attentionInputs(x: a.ln1.pointer, rows: n, at: rows, adapters: ad, into: a.attentionInputs, rope: rope)
        attentionForward(out: a.attn.pointer, q: a.q.pointer, k: a.k.pointer, v: a.v.pointer,
                         scratch: s.attnScratch.pointer, shape: layer.attentionShape(batch: s.batch, seq: s.seq),
                         positions: s.positions, sinks: layer.sinks)
        layer.compactAttention(a.attn.pointer, rows: n)
        layer.attentionOutput(mid: mid, x: x, attn: a.attn.pointer, rows: n, adapter: ad.o,
                              u: a.lora?.o.pointer, scratch: a.ln2.pointer)
        // Feed-forward block: out = mid + r * ffn(norm(mid)).
        rmsnormForward(out: a.ln2.pointer, rstd: a.rstd2.pointer, x: mid, weight: layer.weights.postAttentionNorm,
                       rows: n, cols: h, eps: c.rmsNormEps)
        let base = layer.beginResidual(out: out, base: mid, count: n * h, saved: nil)
        layer.feedForwardSublayer(out: out, x: a.ln2.pointer, rows: n, adapters: adapters, layerAdapters: ad,
                                  buffers: a.feedForwardBuffers(act: s.act.pointer), options: moe,
                                  valid: s.valid, statistics: statistics)
        layer.endResidual(out: out, base: base, count: n * h)
    }

    /// The load-balancing loss as transformers' load_balancing_loss_func computes it for
    /// top-k routing over all layers at once (padding excluded):
    ///   aux = E * sum_e F_e * P_e,  F_e = assignments to e / rows,  P_e = mean router probability of e,
    /// rows = valid tokens x layers; and the ST-MoE z-loss, mean over rows of logsumexp(logits)^2.
    package func computeAuxiliaryLosses(_ s: ForwardState) {
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
