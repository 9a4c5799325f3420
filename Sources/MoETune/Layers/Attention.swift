import Foundation

/// Shapes of one attention call.
public struct AttentionShape: Sendable {
    public var batch: Int      // B
    public var seq: Int        // T
    public var heads: Int      // nH
    public var kvHeads: Int    // nKV (grouped-query attention: nH / nKV query heads share one KV head)
    public var headDim: Int    // D
    var qDim: Int { heads * headDim }
    var kvDim: Int { kvHeads * headDim }
}

/// Causal grouped-query attention.
/// q [B*T, nH*D], k/v [B*T, nKV*D] (RoPE already applied to q and k)
/// probs [B, nH, T, T]: softmax(q k^T / sqrt(D)) with the causal mask (kept for backward;
///   entries above the diagonal are 0)
/// out [B*T, nH*D] = probs v, heads side by side.
/// Sequences are right-padded, so causal masking alone keeps real tokens from seeing
/// padding.
public func attentionForward(out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
                             q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             shape s: AttentionShape) {
    let t = s.seq, d = s.headDim, group = s.heads / s.kvHeads
    let scale = 1 / Float(d).squareRoot()
    for b in 0..<s.batch {
        for h in 0..<s.heads {
            let kvh = h / group
            let p = probs + (b * s.heads + h) * t * t
            BLAS.gemm(.none, .transpose, m: t, n: t, k: d, alpha: scale,
                      a: q + b * t * s.qDim + h * d, lda: s.qDim,
                      b: k + b * t * s.kvDim + kvh * d, ldb: s.kvDim,
                      c: p, ldc: t)
        }
    }
    // Causal softmax over each row of each (b, h) block.
    parallelChunks(s.batch * s.heads * t, minChunk: 64) { rows in
        for r in rows {
            let i = r % t
            let row = probs + r * t
            var m = -Float.infinity
            for j in 0...i { m = max(m, row[j]) }
            var sum: Float = 0
            for j in 0...i {
                let e = Foundation.exp(row[j] - m)
                row[j] = e
                sum += e
            }
            let inv = 1 / sum
            for j in 0...i { row[j] *= inv }
            for j in (i + 1)..<t { row[j] = 0 }
        }
    }
    for b in 0..<s.batch {
        for h in 0..<s.heads {
            let kvh = h / group
            BLAS.gemm(.none, .none, m: t, n: d, k: t,
                      a: probs + (b * s.heads + h) * t * t, lda: t,
                      b: v + b * t * s.kvDim + kvh * d, ldb: s.kvDim,
                      c: out + b * t * s.qDim + h * d, ldc: s.qDim)
        }
    }
}

/// Backward of attentionForward.
/// dout [B*T, nH*D]; q, k, v, probs from the forward pass.
/// dq [B*T, nH*D] is overwritten; dk, dv [B*T, nKV*D] are overwritten (query heads of a
/// group accumulate into their shared KV head). scratch holds T*T floats.
///   dP = dO V^T;  dV += P^T dO;  dS = P * (dP - rowsum(dP * P));
///   dQ = scale dS K;  dK += scale dS^T Q.
public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                              dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              probs: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                              shape s: AttentionShape) {
    let t = s.seq, d = s.headDim, group = s.heads / s.kvHeads
    let scale = 1 / Float(d).squareRoot()
    let n = s.batch * t
    dk.update(repeating: 0, count: n * s.kvDim)
    dv.update(repeating: 0, count: n * s.kvDim)
    for b in 0..<s.batch {
        for h in 0..<s.heads {
            let kvh = h / group
            let p = probs + (b * s.heads + h) * t * t
            let dO = dout + b * t * s.qDim + h * d
            let qh = q + b * t * s.qDim + h * d, dqh = dq + b * t * s.qDim + h * d
            let kh = k + b * t * s.kvDim + kvh * d, dkh = dk + b * t * s.kvDim + kvh * d
            let vh = v + b * t * s.kvDim + kvh * d, dvh = dv + b * t * s.kvDim + kvh * d
            // dP [T, T] = dO V^T
            BLAS.gemm(.none, .transpose, m: t, n: t, k: d, a: dO, lda: s.qDim, b: vh, ldb: s.kvDim,
                      c: scratch, ldc: t)
            // dV += P^T dO
            BLAS.gemm(.transpose, .none, m: t, n: d, k: t, a: p, lda: t, b: dO, ldb: s.qDim,
                      beta: 1, c: dvh, ldc: s.kvDim)
            // dS = P * (dP - rowsum(dP * P)), in place in scratch; zero above the diagonal.
            for i in 0..<t {
                let pr = p + i * t, dr = scratch + i * t
                var dot: Float = 0
                for j in 0...i { dot += pr[j] * dr[j] }
                for j in 0...i { dr[j] = pr[j] * (dr[j] - dot) }
                for j in (i + 1)..<t { dr[j] = 0 }
            }
            // dQ = scale dS K;  dK += scale dS^T Q
            BLAS.gemm(.none, .none, m: t, n: d, k: t, alpha: scale, a: scratch, lda: t, b: kh, ldb: s.kvDim,
                      c: dqh, ldc: s.qDim)
            BLAS.gemm(.transpose, .none, m: t, n: d, k: t, alpha: scale, a: scratch, lda: t, b: qh, ldb: s.qDim,
                      beta: 1, c: dkh, ldc: s.kvDim)
        }
    }
}
