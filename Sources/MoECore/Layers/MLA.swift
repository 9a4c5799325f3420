import Foundation
import MoEFormats
import MoEText

/// DeepSeek-V2's multi-head latent attention (q_lora_rank null), as transformers 5 computes
/// it, turned into the q, k, v that the shared attention kernels take. Shapes, with N tokens,
/// nH heads, nope/rope/vD the head parts, r = kv_lora_rank, D = nope + rope:
///   q    [N, nH*D]       = x Wq^T (+ LoRA `query`), each head [q_nope | q_rope]; with
///                        q_lora_rank qr: ql [N, qr] = x WqA^T, qn = RMSNorm(ql) (q_a_layernorm),
///                        q = qn WqB^T (+ LoRA `query` on q_b_proj; q_a_proj is frozen)
///   ckv  [N, r + rope]   = x Wkva^T (+ LoRA `key`), kv_a_proj_with_mqa: [c | k_rope]
///   cn   [N, r]          = RMSNorm(c) with kv_a_layernorm
///   kv   [N, nH*(nope+vD)] = cn Wkvb^T (+ LoRA `value`), kv_b_proj, each head [k_nope | v]
///   k    [N, nH*D]       each head [k_nope_h | k_rope] (k_rope shared by the heads)
///   v    [N, nH*D]       each head [v_h | 0 ...]: padded to D so that the attention kernels
///                        (one head width) run unchanged; the output's padding is 0 and is dropped.
/// RoPE is interleaved over the rope dims (pairs 2i, 2i+1 rotate by frequency i), on q_rope
/// and k_rope only; cos/sin come from the model's RoPETable of width rope (YaRN's attention
/// factor included). The softmax scale is the config's attentionMultiplier.

/// kv_a_layernorm's epsilon: transformers builds it with DeepseekV2RMSNorm's default 1e-6,
/// not rms_norm_eps.
package let mlaNormEps: Float = 1e-6

/// The frozen weights of one MLA layer.
package struct MLAWeights {
    package let q: Matrix                     // q_proj [nH*D, H], or q_b_proj [nH*D, qr]
    package let qA: Matrix?                   // q_a_proj [qr, H]
    package let qANorm: UnsafePointer<Float>? // q_a_layernorm [qr]
    package let kvA: Matrix                   // kv_a_proj_with_mqa [r + rope, H]
    package let kvB: Matrix                   // kv_b_proj [nH*(nope + vD), r]
    package let kvNorm: UnsafePointer<Float>  // kv_a_layernorm [r]
}

extension LayerWeights {
    package var mlaWeights: MLAWeights? {
        kvANorm.map { MLAWeights(q: q, qA: qA, qANorm: qANorm, kvA: k, kvB: v, kvNorm: $0) }
    }
}

/// Per-layer activations of MLA kept for the backward pass, and the two scratch buffers
/// every layer shares (rewritten by each layer; backward does not need them).
public final class MLAActivations {
    package let latent: FloatBuffer   // [N, r] c before kv_a_layernorm
    package let normed: FloatBuffer   // [N, r] cn, kv_b_proj's input
    package let rstd: FloatBuffer     // [N]
    package let qLatent: FloatBuffer? // [N, qr] ql before q_a_layernorm (q_lora_rank only)
    package let qNormed: FloatBuffer? // [N, qr] qn, q_b_proj's input
    package let qRstd: FloatBuffer?   // [N]
    package let ckv: FloatBuffer      // [N, r + rope] shared
    package let kv: FloatBuffer       // [N, nH*(nope + vD)] shared

    package init(tokens n: Int, shape m: MLAShape, shared: MLAScratch) {
        latent = FloatBuffer(count: n * m.kvLoraRank)
        normed = FloatBuffer(count: n * m.kvLoraRank)
        rstd = FloatBuffer(count: n)
        qLatent = m.qLoraRank.map { FloatBuffer(count: n * $0) }
        qNormed = m.qLoraRank.map { FloatBuffer(count: n * $0) }
        qRstd = m.qLoraRank.map { _ in FloatBuffer(count: n) }
        ckv = shared.ckv
        kv = shared.kv
    }
}

/// The scratch MLA layers share: ckv [N, r + rope] and kv [N, nH*(nope + vD)].
package struct MLAScratch {
    package let ckv: FloatBuffer
    package let kv: FloatBuffer
    package init(tokens n: Int, heads: Int, shape m: MLAShape) {
        ckv = FloatBuffer(count: n * (m.kvLoraRank + m.ropeDim))
        kv = FloatBuffer(count: n * heads * (m.nopeDim + m.valueDim))
    }
}

/// Gradient scratch of MLA's backward: dkv [N, nH*(nope + vD)], dlatent [N, r], dckv [N, r + rope],
/// and with q_lora_rank dqNormed, dqLatent [N, qr].
package final class MLAGradients {
    package let dkv: FloatBuffer, dlatent: FloatBuffer, dckv: FloatBuffer
    package let dqNormed: FloatBuffer?, dqLatent: FloatBuffer?
    package init(tokens n: Int, heads: Int, shape m: MLAShape) {
        dkv = FloatBuffer(count: n * heads * (m.nopeDim + m.valueDim))
        dlatent = FloatBuffer(count: n * m.kvLoraRank)
        dckv = FloatBuffer(count: n * (m.kvLoraRank + m.ropeDim))
        dqNormed = m.qLoraRank.map { FloatBuffer(count: n * $0) }
        dqLatent = m.qLoraRank.map { FloatBuffer(count: n * $0) }
    }
}

/// The LoRA adapters of MLA's three input projections and their u caches [N, rank].
package struct MLAAdapters {
    package var q: LoRAAdapter?, kvA: LoRAAdapter?, kvB: LoRAAdapter?
    package var uq: UnsafeMutablePointer<Float>?, ukvA: UnsafeMutablePointer<Float>?, ukvB: UnsafeMutablePointer<Float>?
}

/// Interleaved RoPE of one vector x [rope] at `position`, in place: (x[2i], x[2i+1]) is the
/// complex number x[2i] + i x[2i+1], multiplied by (cos + i sin) of frequency i; sign -1
/// rotates back (the backward pass).
@inline(__always)
package func ropeInterleaved(_ x: UnsafeMutablePointer<Float>, position: Int, table: RoPETable, sign: Float) {
    let half = table.headDim / 2
    table.cos.withUnsafeBufferPointer { cb in
        table.sin.withUnsafeBufferPointer { sb in
            let c = cb.baseAddress! + position * half, s = sb.baseAddress! + position * half
            for i in 0..<half {
                let x0 = x[2 * i], x1 = x[2 * i + 1], sn = sign * s[i]
                x[2 * i] = x0 * c[i] - x1 * sn
                x[2 * i + 1] = x0 * sn + x1 * c[i]
            }
        }
    }
}

/// Forward of MLA's projections: writes q, k, v [N, nH*D] (RoPE applied) from x [N, H]
/// (the input norm's output) and keeps latent, normed and rstd in `acts`. Row i has position
/// i % seq + offset (offset: the KV-cache decoder's position), or positions[i] (packed rows).
package func mlaForward(q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>,
                x: UnsafePointer<Float>, rows n: Int, seq t: Int, positionOffset: Int = 0, heads nH: Int, shape m: MLAShape,
                weights w: MLAWeights, adapters ad: MLAAdapters, acts a: MLAActivations, rope: RoPETable,
                positions: UnsafePointer<Int32>? = nil, path: ProductPath = .exact) {
    let r = m.kvLoraRank, dr = m.ropeDim, dn = m.nopeDim, dv = m.valueDim, d = m.qkDim
    let ckv = a.ckv.pointer, kv = a.kv.pointer, latent = a.latent.pointer
    var qIn = x
    if let wqA = w.qA, let qNorm = w.qANorm, let ql = a.qLatent, let qn = a.qNormed, let qr = a.qRstd {
        // q_lora_rank: ql [N, qr] = x WqA^T; qn = RMSNorm(ql), q_b_proj's (and its LoRA's) input.
        linearForward(y: ql.pointer, x: x, rows: n, weight: wqA, path: path)
        rmsnormForward(out: qn.pointer, rstd: qr.pointer, x: ql.pointer, weight: qNorm, rows: n, cols: wqA.rows, eps: mlaNormEps)
        qIn = UnsafePointer(qn.pointer)
    }
    linearForward(y: q, x: qIn, rows: n, weight: w.q, path: path)
    if let l = ad.q { loraForward(y: q, x: qIn, rows: n, adapter: l, u: ad.uq!) }
    linearForward(y: ckv, x: x, rows: n, weight: w.kvA, path: path)
    if let l = ad.kvA { loraForward(y: ckv, x: x, rows: n, adapter: l, u: ad.ukvA!) }
    for i in 0..<n { (latent + i * r).update(from: ckv + i * (r + dr), count: r) }
    rmsnormForward(out: a.normed.pointer, rstd: a.rstd.pointer, x: latent, weight: w.kvNorm, rows: n, cols: r, eps: mlaNormEps)
    linearForward(y: kv, x: a.normed.pointer, rows: n, weight: w.kvB, path: path)
    if let l = ad.kvB { loraForward(y: kv, x: a.normed.pointer, rows: n, adapter: l, u: ad.ukvB!) }
    parallelChunks(n, minChunk: 16) { range in
        for i in range {
            let pos = positions.map { Int($0[i]) } ?? i % t + positionOffset
            let kRope = ckv + i * (r + dr) + r
            ropeInterleaved(kRope, position: pos, table: rope, sign: 1)
            for h in 0..<nH {
                let qh = q + i * nH * d + h * d, kh = k + i * nH * d + h * d, vh = v + i * nH * d + h * d
                let src = kv + i * nH * (dn + dv) + h * (dn + dv)
                ropeInterleaved(qh + dn, position: pos, table: rope, sign: 1)
                kh.update(from: src, count: dn)
                (kh + dn).update(from: kRope, count: dr)
                vh.update(from: src + dn, count: dv)
                (vh + dv).update(repeating: 0, count: d - dv)
            }
        }
    }
}

/// The attention output [N, nH*D] (each head's v part, then padding) compacted in place to
/// o_proj's input [N, nH*vD]. Every element moves to an index no larger than its own, read
/// before anything is written over it.
package func mlaCompactOutput(_ attn: UnsafeMutablePointer<Float>, rows n: Int, heads nH: Int, shape m: MLAShape) {
    let d = m.qkDim, dv = m.valueDim
    for i in 0..<n {
        for h in 0..<nH {
            let src = attn + i * nH * d + h * d, dst = attn + i * nH * dv + h * dv
            for j in 0..<dv { dst[j] = src[j] }
        }
    }
}

/// Backward of mlaCompactOutput: d of o_proj's input [N, nH*vD] expanded in place to
/// [N, nH*D] with zero padding, last element first.
package func mlaExpandGradient(_ d: UnsafeMutablePointer<Float>, rows n: Int, heads nH: Int, shape m: MLAShape) {
    let w = m.qkDim, dv = m.valueDim
    for i in stride(from: n - 1, through: 0, by: -1) {
        for h in stride(from: nH - 1, through: 0, by: -1) {
            let src = d + i * nH * dv + h * dv, dst = d + i * nH * w + h * w
            for j in stride(from: w - 1, through: dv, by: -1) { dst[j] = 0 }
            for j in stride(from: dv - 1, through: 0, by: -1) { dst[j] = src[j] }
        }
    }
}

/// Backward of mlaForward. dq, dk, dv [N, nH*D] are the attention kernel's gradients
/// (dq is rotated back in place); writes dx [N, H] = d of x through q_proj,
/// kv_a_proj_with_mqa, kv_a_layernorm and kv_b_proj, and accumulates the adapters' gradients.
///   d k_rope = sum over heads of dk[h, nope...], rotated back;  d kv[h] = [dk[h, :nope] | dv[h, :vD]]
///   d cn = dkv Wkvb (+ LoRA);  d c = RMSNorm backward;  d ckv = [d c | d k_rope]
///   dx = dq Wq^T (+ LoRA) + dckv Wkva (+ LoRA)
package func mlaBackward(dx: UnsafeMutablePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafePointer<Float>,
                 dv: UnsafePointer<Float>, x: UnsafePointer<Float>, rows n: Int, seq t: Int, heads nH: Int, shape m: MLAShape,
                 weights w: MLAWeights, adapters ad: MLAAdapters, acts a: MLAActivations, grads g: MLAGradients, rope: RoPETable,
                 du: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>? = nil) {
    let r = m.kvLoraRank, dr = m.ropeDim, dn = m.nopeDim, dvD = m.valueDim, d = m.qkDim
    let dkv = g.dkv.pointer, dckv = g.dckv.pointer, dlat = g.dlatent.pointer
    parallelChunks(n, minChunk: 16) { range in
        for i in range {
            let pos = positions.map { Int($0[i]) } ?? i % t
            let dRope = dckv + i * (r + dr) + r
            dRope.update(repeating: 0, count: dr)
            for h in 0..<nH {
                let qh = dq + i * nH * d + h * d, kh = dk + i * nH * d + h * d, vh = dv + i * nH * d + h * d
                ropeInterleaved(qh + dn, position: pos, table: rope, sign: -1)
                let dst = dkv + i * nH * (dn + dvD) + h * (dn + dvD)
                dst.update(from: kh, count: dn)
                (dst + dn).update(from: vh, count: dvD)
                for j in 0..<dr { dRope[j] += kh[dn + j] }
            }
            ropeInterleaved(dRope, position: pos, table: rope, sign: -1)
        }
    }
    // d cn [N, r] (in dlatent's room first, then d c replaces it via dckv).
    let dnormed = dlat
    linearBackwardInput(dx: dnormed, dy: dkv, rows: n, weight: w.kvB, accumulate: false)
    if let l = ad.kvB { loraBackward(dx: dnormed, dy: dkv, x: a.normed.pointer, rows: n, adapter: l, u: ad.ukvB!, du: du) }
    for i in 0..<n { (dckv + i * (r + dr)).update(repeating: 0, count: r) }
    rmsnormBackwardStrided(dx: dckv, dxStride: r + dr, dy: dnormed, x: a.latent.pointer, weight: w.kvNorm,
                           rstd: a.rstd.pointer, rows: n, cols: r)
    if let wqA = w.qA, let qNorm = w.qANorm, let ql = a.qLatent, let qn = a.qNormed, let qr = a.qRstd,
       let dqn = g.dqNormed, let dql = g.dqLatent {
        // q = qn WqB^T: d qn = dq WqB (+ LoRA); d ql through q_a_layernorm; dx = d ql WqA.
        linearBackwardInput(dx: dqn.pointer, dy: dq, rows: n, weight: w.q, accumulate: false)
        if let l = ad.q { loraBackward(dx: dqn.pointer, dy: dq, x: qn.pointer, rows: n, adapter: l, u: ad.uq!, du: du) }
        dql.pointer.update(repeating: 0, count: n * wqA.rows)
        rmsnormBackward(dx: dql.pointer, dy: dqn.pointer, x: ql.pointer, weight: qNorm, rstd: qr.pointer, rows: n, cols: wqA.rows)
        linearBackwardInput(dx: dx, dy: dql.pointer, rows: n, weight: wqA, accumulate: false)
    } else {
        linearBackwardInput(dx: dx, dy: dq, rows: n, weight: w.q, accumulate: false)
        if let l = ad.q { loraBackward(dx: dx, dy: dq, x: x, rows: n, adapter: l, u: ad.uq!, du: du) }
    }
    linearBackwardInput(dx: dx, dy: dckv, rows: n, weight: w.kvA, accumulate: true)
    if let l = ad.kvA { loraBackward(dx: dx, dy: dckv, x: x, rows: n, adapter: l, u: ad.ukvA!, du: du) }
}

/// rmsnormBackward whose dx rows have stride dxStride (>= cols): dx[n, :cols] += d x.
package func rmsnormBackwardStrided(dx: UnsafeMutablePointer<Float>, dxStride: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                            weight w: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows n: Int, cols c: Int) {
    for i in 0..<n {
        let xi = x + i * c, dyi = dy + i * c, dxi = dx + i * dxStride, rs = rstd[i]
        var dot: Float = 0
        for j in 0..<c { dot += w[j] * dyi[j] * xi[j] }
        let k = rs * rs * rs / Float(c) * dot
        for j in 0..<c { dxi[j] += rs * w[j] * dyi[j] - k * xi[j] }
    }
}
