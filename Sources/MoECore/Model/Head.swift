import MoEFormats
import MoEText
/// The LM head and the loss, forward and backward, over the head's m rows (all N
/// positions, or the scored ones compacted to the front: ForwardState.selectHeadRows):
///   logits [m, V] = lnF Wlm^T (+ s u B^T with a head adapter), / logits_scaling (Granite);
///   loss = sum over rows of cross-entropy(logits, target).
/// Whole: the logits of all m rows at once; backward turns them into d logits in place.
/// In row chunks (ForwardState.headChunk < m): the logits buffer holds one chunk
/// [chunk, V], and a training state takes the head's backward in the forward pass, chunk by
/// chunk, before the next chunk overwrites the logits: d logits (scale headLossScale) and
/// d lnF = d logits Wlm, written over the chunk's rows of lnF, which nothing reads again
/// (the final norm's backward reads the residual and rstdF). So an [N, V] buffer is never
/// needed; the products are the same ones, over fewer rows at a time. A head adapter's
/// gradients are then also accumulated in the forward pass (no adapter dropout there).
extension Transformer {
    /// Forward (and, chunked in training, backward) of the head; returns the summed loss
    /// and the number of scored rows.
    package func headForward(_ s: ForwardState, rows m: Int, adapters: AdapterSet?) throws -> (sum: Double, count: Int) {
        let c = config, v = c.vocabSize, h = c.hiddenSize
        guard s.chunkedHead else {
            // Whole: logits [m, V].
            linearForward(y: s.logits.pointer, x: s.lnF.pointer, rows: m, weight: lmHead)
            if let l = adapters?.head { loraForward(y: s.logits.pointer, x: s.lnF.pointer, rows: m, adapter: l, u: s.headLoRA!.pointer) }
            if c.logitsScaling != 1 { divideInPlace(s.logits.pointer, count: m * v, by: c.logitsScaling) }
            if s.headTemperature != 1 { divideInPlace(s.logits.pointer, count: m * v, by: s.headTemperature) }
            s.headGradientTaken = false
            return crossEntropyForward(losses: s.losses.pointer, logits: s.logits.pointer, targets: s.headTargets,
                                       rows: m, vocab: v)
        }
        let head = adapters?.head
        if let d = head?.dropout, d.active {
            throw MoETuneError.invalid("internal: a head in row chunks cannot carry an adapter with dropout (build the ForwardState without headChunkRows)")
        }
        let backward = s.keepsAllLayers
        if s.headTemperature != 1 {
            throw MoETuneError.invalid("internal: a loss temperature needs the whole head (build the ForwardState without headChunkRows)")
        }
        if backward, s.headRowScales != nil {
            throw MoETuneError.invalid("internal: per-row loss scales need the whole head (build the ForwardState without headChunkRows)")
        }
        var scale: Float = 0
        if backward {
            guard let sc = s.headLossScale else {
                throw MoETuneError.invalid("internal: a training state with a chunked head needs headLossScale before forward")
            }
            scale = sc
        }
        let logits = s.logits.pointer
        var r0 = 0
        while r0 < m {
            let rows = min(s.headChunk, m - r0)
            let x = s.lnF.pointer + r0 * h, targets = s.headTargets + r0
            // logits [rows, V] = x Wlm^T (/ logits_scaling); each row's loss into losses.
            linearForward(y: logits, x: x, rows: rows, weight: lmHead)
            if let l = head { loraForward(y: logits, x: x, rows: rows, adapter: l, u: s.headLoRA!.pointer + r0 * l.rank) }
            if c.logitsScaling != 1 { divideInPlace(logits, count: rows * v, by: c.logitsScaling) }
            _ = crossEntropyForward(losses: s.losses.pointer + r0, logits: logits, targets: targets, rows: rows, vocab: v)
            if backward {
                // d logits [rows, V] in place; d z = d logits / logits_scaling; d x [rows, H] = d z Wlm over x.
                crossEntropyBackward(dlogits: logits, logits: logits, targets: targets, rows: rows, vocab: v, scale: scale)
                if c.logitsScaling != 1 { divideInPlace(logits, count: rows * v, by: c.logitsScaling) }
                if let l = head, let scratch = s.headScratch {
                    // With the head adapter: its gradients, and d x in a scratch while dA reads x.
                    linearBackwardInput(dx: scratch.dx.pointer, dy: logits, rows: rows, weight: lmHead, accumulate: false)
                    loraBackward(dx: scratch.dx.pointer, dy: logits, x: x, rows: rows, adapter: l,
                                 u: s.headLoRA!.pointer + r0 * l.rank, du: scratch.du.pointer)
                    x.update(from: scratch.dx.pointer, count: rows * h)
                } else {
                    linearBackwardInput(dx: x, dy: logits, rows: rows, weight: lmHead, accumulate: false)
                }
            }
            r0 += rows
        }
        s.headGradientTaken = backward
        // The sum in row order, as the whole head sums it.
        var total = 0.0, count = 0
        for i in 0..<m where s.headTargets[i] >= 0 {
            total += Double(s.losses[i])
            count += 1
        }
        return (total, count)
    }

    /// Backward of headForward: dln [m, H] = d lnF of the head's rows (compact, as forward
    /// ordered them), and the head adapter's gradients. After a chunked training forward the
    /// gradient is already in lnF (taken with headLossScale, which must equal lossScale).
    package func headBackward(_ s: ForwardState, adapters: AdapterSet, dln: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>,
                      lossScale: Float) {
        let c = config, m = s.headRows, h = c.hiddenSize
        if s.headGradientTaken {
            precondition(s.headLossScale == lossScale, "the chunked head's gradient was taken with headLossScale \(String(describing: s.headLossScale)), not \(lossScale)")
            dln.update(from: s.lnF.pointer, count: m * h)
            return
        }
        // d logits overwrite the logits, which nothing needs any more.
        let dlogits = s.logits.pointer
        crossEntropyBackward(dlogits: dlogits, logits: dlogits, targets: s.headTargets,
                             rows: m, vocab: c.vocabSize, scale: lossScale, rowScales: s.headRowScales)
        // A loss temperature: logits / T went into the cross-entropy, so d logits = d (logits / T) / T.
        if s.headTemperature != 1 { divideInPlace(dlogits, count: m * c.vocabSize, by: s.headTemperature) }
        // Granite: logits = z / logits_scaling, so d z [m, V] = d logits / logits_scaling.
        if c.logitsScaling != 1 { divideInPlace(dlogits, count: m * c.vocabSize, by: c.logitsScaling) }
        linearBackwardInput(dx: dln, dy: dlogits, rows: m, weight: lmHead, accumulate: false)
        if let l = adapters.head {
            loraBackward(dx: dln, dy: dlogits, x: s.lnF.pointer, rows: m, adapter: l,
                         u: s.headLoRA!.pointer, du: du)
        }
    }
}
