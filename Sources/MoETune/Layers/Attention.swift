import CKernels
import Foundation

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
    var softmaxScale: Float { scale ?? 1 / Float(headDim).squareRoot() }
    var qDim: Int { heads * headDim }
    var kvDim: Int { kvHeads * headDim }
}

/// P [T, T] = causal softmax(q_h k_h^T / sqrt(D)) of one (sequence, head); entries above
/// the diagonal, and with a sliding window W those left of i - W + 1, are 0 (the backward
/// pass needs no other change: dS = P * (...) is 0 wherever P is). q rows have stride qDim,
/// k rows stride kvDim.
@inline(__always)
func attentionProbabilities(_ p: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                            shape s: AttentionShape) {
    let t = s.seq
    BLAS.gemm(.none, .transpose, m: t, n: t, k: s.headDim, alpha: s.softmaxScale,
              a: q, lda: s.qDim, b: k, ldb: s.kvDim, c: p, ldc: t, split: false)
    for i in 0..<t {
        let row = p + i * t
        let start = s.window.map { max(0, i - $0 + 1) } ?? 0
        let seen = row + start, count = i + 1 - start
        let inv = 1 / mt_exp_shift_inplace(seen, count, mt_max(seen, count))
        for j in 0..<start { row[j] = 0 }
        for j in start...i { row[j] *= inv }
        for j in (i + 1)..<t { row[j] = 0 }
    }
}

/// Causal grouped-query attention.
/// q [B*T, nH*D], k/v [B*T, nKV*D] (RoPE already applied to q and k)
/// out [B*T, nH*D] = softmax(q k^T / sqrt(D)) v per head, heads side by side.
/// The probabilities are not kept: the backward pass recomputes them from q and k
/// (as flash attention does), which saves B*nH*T*T floats per layer.
/// scratch holds cores * T*T floats. Sequences are right-padded, so causal masking alone
/// keeps real tokens from seeing padding.
public func attentionForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                             v: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, shape s: AttentionShape) {
    let t = s.seq, d = s.headDim, group = s.heads / s.kvHeads
    let tasks = s.batch * s.heads
    let workers = min(BLAS.cores, tasks)
    let per = (tasks + workers - 1) / workers
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        let p = scratch + w * t * t
        for task in (w * per)..<min(tasks, (w + 1) * per) {
            let b = task / s.heads, h = task % s.heads, kvh = h / group
            attentionProbabilities(p, q: q + b * t * s.qDim + h * d, k: k + b * t * s.kvDim + kvh * d, shape: s)
            BLAS.gemm(.none, .none, m: t, n: d, k: t,
                      a: p, lda: t, b: v + b * t * s.kvDim + kvh * d, ldb: s.kvDim,
                      c: out + b * t * s.qDim + h * d, ldc: s.qDim, split: false)
        }
    }
}

/// Backward of attentionForward.
/// dout [B*T, nH*D]; q, k, v from the forward pass (P is recomputed).
/// dq [B*T, nH*D] is overwritten; dk, dv [B*T, nKV*D] are overwritten (query heads of a
/// group accumulate into their shared KV head). scratch holds cores * 2 * T*T floats.
///   dP = dO V^T;  dV += P^T dO;  dS = P * (dP - rowsum(dP * P));
///   dQ = scale dS K;  dK += scale dS^T Q.
public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                              dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              scratch: UnsafeMutablePointer<Float>, shape s: AttentionShape) {
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
            let kh = k + b * t * s.kvDim + kvh * d, dkh = dk + b * t * s.kvDim + kvh * d
            let vh = v + b * t * s.kvDim + kvh * d, dvh = dv + b * t * s.kvDim + kvh * d
            for row in 0..<t {
                (dkh + row * s.kvDim).update(repeating: 0, count: d)
                (dvh + row * s.kvDim).update(repeating: 0, count: d)
            }
            for h in (kvh * group)..<((kvh + 1) * group) {
                let dO = dout + b * t * s.qDim + h * d
                let qh = q + b * t * s.qDim + h * d, dqh = dq + b * t * s.qDim + h * d
                attentionProbabilities(p, q: qh, k: kh, shape: s)
                // dP [T, T] = dO V^T
                BLAS.gemm(.none, .transpose, m: t, n: t, k: d, a: dO, lda: s.qDim, b: vh, ldb: s.kvDim,
                          c: dS, ldc: t, split: false)
                // dV += P^T dO
                BLAS.gemm(.transpose, .none, m: t, n: d, k: t, a: p, lda: t, b: dO, ldb: s.qDim,
                          beta: 1, c: dvh, ldc: s.kvDim, split: false)
                // dS = P * (dP - rowsum(dP * P)), in place; zero above the diagonal.
                for i in 0..<t {
                    let pr = p + i * t, dr = dS + i * t
                    var dot: Float = 0
                    for j in 0...i { dot += pr[j] * dr[j] }
                    for j in 0...i { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in (i + 1)..<t { dr[j] = 0 }
                }
                // dQ = scale dS K;  dK += scale dS^T Q
                BLAS.gemm(.none, .none, m: t, n: d, k: t, alpha: scale, a: dS, lda: t, b: kh, ldb: s.kvDim,
                          c: dqh, ldc: s.qDim, split: false)
                BLAS.gemm(.transpose, .none, m: t, n: d, k: t, alpha: scale, a: dS, lda: t, b: qh, ldb: s.qDim,
                          beta: 1, c: dkh, ldc: s.kvDim, split: false)
            }
        }
    }
}
