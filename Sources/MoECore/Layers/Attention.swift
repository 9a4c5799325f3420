import CKernels
import Foundation
import MoEFormats
import MoEText

/// Shapes of one attention call.
public struct AttentionShape: Sendable {
    public var batch: Int      // B
    public var seq: Int        // T
    public var heads: Int      // nH
    public var kvHeads: Int    // nKV (grouped-query attention: nH / nKV query heads share one KV head)
    public var headDim: Int    // D
    /// Sliding window W (Mistral): query i sees keys j with i - W < j <= i; nil: all j <= i.
    public var window: Int? = nil
    /// Scale of q k^T: Granite's attention_multiplier; nil: 1 / sqrt(D).
    public var scale: Float? = nil
    package var softmaxScale: Float { scale ?? 1 / Float(headDim).squareRoot() }
    package var qDim: Int { heads * headDim }
    package var kvDim: Int { kvHeads * headDim }
}

/// Causal row blocks: body(i0, i1) for rows [i0, i1) of a [T, T] score matrix, `causalBlock`
/// rows at a time. Rows [i0, i1) see keys [0, i1) only, so every product of attention runs on
/// that [i1 - i0, i1] block and the blocks above the diagonal are never computed: at T = 256
/// and 64-row blocks, 62.5% of the full T x T work (README "Speed: causal blocks").
/// MOE_TUNE_ATTENTION_BLOCK=N sets the rows per block; 0 computes full T x T products
/// (one block), to measure the two.
@inline(__always)
package func forEachCausalBlock(_ t: Int, block: Int, _ body: (Int, Int) -> Void) {
    let step = block > 0 ? block : t
    var i0 = 0
    while i0 < t {
        let i1 = min(t, i0 + step)
        body(i0, i1)
        i0 = i1
    }
}

/// Rows per causal block: RunOptions.attentionBlock (MOE_TUNE_ATTENTION_BLOCK; 0: one full
/// T x T block), read once, on first use.
@usableFromInline package let causalBlock: Int = RunOptions.current.attentionBlock

/// Rows per causal block when MOE_TUNE_ATTENTION_BLOCK is unset.
package let defaultCausalBlock = 64

/// P [T, T] = causal softmax(q_h k_h^T / sqrt(D)) of one (sequence, head), computed by causal
/// row blocks (forEachCausalBlock): rows [i0, i1) hold P in columns [0, i1) (0 above the
/// diagonal, and with a sliding window W left of i - W + 1); columns i1..<T of those rows are
/// not written, and no caller reads them (the backward pass needs no other change: dS =
/// P * (...) is 0 wherever P is). q rows have stride qDim, k rows stride kvDim.
/// With an attention sink s_h (GPT-OSS), each row's softmax has one more logit, s_h, whose
/// probability is dropped: P[i, j] = exp(S[i, j]) / (sum_j' exp(S[i, j']) + exp(s_h)), so
/// a row sums to less than 1. The backward pass is unchanged (the sink has no value row,
/// so its dP is 0 and it adds nothing to rowsum(dP * P)); the sink itself stays frozen.
@inline(__always)
package func attentionProbabilities(_ p: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                            shape s: AttentionShape, sink: Float? = nil, block: Int = causalBlock) {
    let t = s.seq
    forEachCausalBlock(t, block: block) { i0, i1 in
        // S [i1 - i0, i1] = q[i0..<i1] k[0..<i1]^T * scale
        BLAS.gemm(.none, .transpose, m: i1 - i0, n: i1, k: s.headDim, alpha: s.softmaxScale,
                  a: q + i0 * s.qDim, lda: s.qDim, b: k, ldb: s.kvDim, c: p + i0 * t, ldc: t, split: false)
        for i in i0..<i1 {
            let row = p + i * t
            let start = s.window.map { max(0, i - $0 + 1) } ?? 0
            let seen = row + start, count = i + 1 - start
            let inv: Float
            if let sink {
                let shift = max(mt_max(seen, count), sink)
                inv = 1 / (mt_exp_shift_inplace(seen, count, shift) + Foundation.exp(sink - shift))
            } else {
                inv = 1 / mt_exp_shift_inplace(seen, count, mt_max(seen, count))
            }
            for j in 0..<start { row[j] = 0 }
            for j in start...i { row[j] *= inv }
            for j in (i + 1)..<i1 { row[j] = 0 }
        }
    }
}

/// Calls body(start, length) for each example held by row `row` of a [B, T] batch: one
/// example spanning the row when `positions` is nil, else a new one wherever the
/// position id is 0 (packed rows; trailing padding forms an example of its own).
@inline(__always)
package func forEachSegment(row: Int, seq t: Int, positions: UnsafePointer<Int32>?, _ body: (Int, Int) -> Void) {
    guard let positions else { body(0, t); return }
    let p = positions + row * t
    var start = 0
    while start < t {
        var end = start + 1
        while end < t, p[end] != 0 { end += 1 }
        body(start, end - start)
        start = end
    }
}

/// Causal grouped-query attention.
/// q [B*T, nH*D], k/v [B*T, nKV*D] (RoPE already applied to q and k)
/// out [B*T, nH*D] = softmax(q k^T / sqrt(D)) v per head, heads side by side.
/// The probabilities are not kept: the backward pass recomputes them from q and k
/// (as flash attention does), which saves B*nH*T*T floats per layer.
/// scratch holds cores * T*T floats. Sequences are right-padded, so causal masking alone
/// keeps real tokens from seeing padding. With `positions` [B*T] (packed rows), attention
/// is block-diagonal: each example [start, start+L) of a row is attended on its own, as
/// an unpacked sequence of length L would be (the blocks off the diagonal are never computed).
/// `sinks` [nH]: GPT-OSS's per-head attention sink logits (see attentionProbabilities); nil: none.
/// `block`: rows per causal block (forEachCausalBlock; 0: one block; tests vary it).
public func attentionForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                             v: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, shape s: AttentionShape,
                             positions: UnsafePointer<Int32>? = nil, sinks: UnsafePointer<Float>? = nil,
                             block: Int = causalBlock) {
    let t = s.seq, d = s.headDim, group = s.heads / s.kvHeads
    let tasks = s.batch * s.heads
    let workers = min(BLAS.cores, tasks)
    let per = (tasks + workers - 1) / workers
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        let p = scratch + w * t * t
        for task in (w * per)..<min(tasks, (w + 1) * per) {
            let b = task / s.heads, h = task % s.heads, kvh = h / group
            forEachSegment(row: b, seq: t, positions: positions) { start, len in
                var ss = s
                ss.seq = len
                let row = b * t + start
                attentionProbabilities(p, q: q + row * s.qDim + h * d, k: k + row * s.kvDim + kvh * d, shape: ss,
                                       sink: sinks.map { $0[h] }, block: block)
                // out[i0..<i1] [i1 - i0, D] = P[i0..<i1, 0..<i1] v[0..<i1]
                forEachCausalBlock(len, block: block) { i0, i1 in
                    BLAS.gemm(.none, .none, m: i1 - i0, n: d, k: i1,
                              a: p + i0 * len, lda: len, b: v + row * s.kvDim + kvh * d, ldb: s.kvDim,
                              c: out + (row + i0) * s.qDim + h * d, ldc: s.qDim, split: false)
                }
            }
        }
    }
}

/// Backward of attentionForward.
/// dout [B*T, nH*D]; q, k, v from the forward pass (P is recomputed); `positions` and
/// `sinks` as there (the sinks get no gradient: they are frozen).
/// dq [B*T, nH*D] is overwritten; dk, dv [B*T, nKV*D] are overwritten (query heads of a
/// group accumulate into their shared KV head). scratch holds cores * 2 * T*T floats.
/// Per example [start, start+L) of a row, with P [L, L]:
///   dP = dO V^T;  dV += P^T dO;  dS = P * (dP - rowsum(dP * P));
///   dQ = scale dS K;  dK += scale dS^T Q.
public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                              dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              scratch: UnsafeMutablePointer<Float>, shape s: AttentionShape,
                              positions: UnsafePointer<Int32>? = nil, sinks: UnsafePointer<Float>? = nil,
                              block: Int = causalBlock) {
    let t = s.seq, d = s.headDim, group = s.heads / s.kvHeads
    let scale = s.softmaxScale
    // One task per (sequence, KV head): the query heads of a group accumulate into the
    // same dK/dV, so they stay on one thread. Each worker has its own scratch.
    let tasks = s.batch * s.kvHeads
    let workers = min(BLAS.cores, tasks)
    let per = (tasks + workers - 1) / workers
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        let p = scratch + w * 2 * t * t, dS = p + t * t
        for task in (w * per)..<min(tasks, (w + 1) * per) {
            let b = task / s.kvHeads, kvh = task % s.kvHeads
            for row in 0..<t {
                (dk + (b * t + row) * s.kvDim + kvh * d).update(repeating: 0, count: d)
                (dv + (b * t + row) * s.kvDim + kvh * d).update(repeating: 0, count: d)
            }
            forEachSegment(row: b, seq: t, positions: positions) { start, len in
                var ss = s
                ss.seq = len
                let first = b * t + start
                let kh = k + first * s.kvDim + kvh * d, dkh = dk + first * s.kvDim + kvh * d
                let vh = v + first * s.kvDim + kvh * d, dvh = dv + first * s.kvDim + kvh * d
                for h in (kvh * group)..<((kvh + 1) * group) {
                    let dO = dout + first * s.qDim + h * d
                    let qh = q + first * s.qDim + h * d, dqh = dq + first * s.qDim + h * d
                    attentionProbabilities(p, q: qh, k: kh, shape: ss, sink: sinks.map { $0[h] }, block: block)
                    // Per causal row block [i0, i1) (rows see keys [0, i1)), with P_b = P[i0..<i1, 0..<i1]:
                    forEachCausalBlock(len, block: block) { i0, i1 in
                        let m = i1 - i0, pb = p + i0 * len, db = dS + i0 * len
                        // dP_b [m, i1] = dO[i0..<i1] V[0..<i1]^T
                        BLAS.gemm(.none, .transpose, m: m, n: i1, k: d, a: dO + i0 * s.qDim, lda: s.qDim, b: vh, ldb: s.kvDim,
                                  c: db, ldc: len, split: false)
                        // dV[0..<i1] [i1, D] += P_b^T dO[i0..<i1]
                        BLAS.gemm(.transpose, .none, m: i1, n: d, k: m, a: pb, lda: len, b: dO + i0 * s.qDim, ldb: s.qDim,
                                  beta: 1, c: dvh, ldc: s.kvDim, split: false)
                        // dS_b = P_b * (dP_b - rowsum(dP_b * P_b)), in place; zero above the diagonal.
                        for i in i0..<i1 {
                            let pr = p + i * len, dr = dS + i * len
                            var dot: Float = 0
                            for j in 0...i { dot += pr[j] * dr[j] }
                            for j in 0...i { dr[j] = pr[j] * (dr[j] - dot) }
                            for j in (i + 1)..<i1 { dr[j] = 0 }
                        }
                        // dQ[i0..<i1] [m, D] = scale dS_b K[0..<i1];  dK[0..<i1] [i1, D] += scale dS_b^T Q[i0..<i1]
                        BLAS.gemm(.none, .none, m: m, n: d, k: i1, alpha: scale, a: db, lda: len, b: kh, ldb: s.kvDim,
                                  c: dqh + i0 * s.qDim, ldc: s.qDim, split: false)
                        BLAS.gemm(.transpose, .none, m: i1, n: d, k: m, alpha: scale, a: db, lda: len, b: qh + i0 * s.qDim,
                                  ldb: s.qDim, beta: 1, c: dkh, ldc: s.kvDim, split: false)
                    }
                }
            }
        }
    }
}

/// One decoding step of the KV cache: the new query q [nH*D] at position `pos` attends to
/// the cached keys and values [maxLength, nKV*D], rows first...pos (first > 0 under a
/// sliding window W: first = max(0, pos - W + 1)); query head h reads KV head h / group.
/// out [nH*D] = sum_j p_j v_j with p = softmax(scale q k_j), the per-head sink joining the
/// denominator when `sinks` [nH] is given (as in attentionProbabilities). scores [pos+1] is scratch.
public func attentionDecodeStep(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, keys: UnsafePointer<Float>,
                                values: UnsafePointer<Float>, first: Int, pos: Int, heads: Int, group: Int, headDim d: Int,
                                kvDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                sinks: UnsafePointer<Float>? = nil) {
    // CKernels' attention_decode.c: AVX2 dot products and sums (the scalar loop is the definition).
    mt_attention_decode(out, q, keys, values, first, pos, heads, group, d, kvDim, scale, scores, sinks)
}
