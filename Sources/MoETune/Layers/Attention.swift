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
