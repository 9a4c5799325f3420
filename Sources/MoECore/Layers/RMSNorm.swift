import Foundation
import MoEFormats
import MoEText

/// RMSNorm as Hugging Face Llama computes it (in fp32):
/// out[n, :] = weight * x[n, :] * rstd[n],  rstd[n] = 1 / sqrt(mean(x[n, :]^2) + eps).
/// x, out [N, C]; weight [C]; rstd [N] is kept for the backward pass.
public func rmsnormForward(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
                           x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                           rows n: Int, cols c: Int, eps: Float) {
    parallelChunks(n, minChunk: 64) { range in
        for i in range {
            let xi = x + i * c, oi = out + i * c
            var ss: Float = 0
            for j in 0..<c { ss += xi[j] * xi[j] }
            let r = 1 / (ss / Float(c) + eps).squareRoot()
            rstd[i] = r
            for j in 0..<c { oi[j] = weight[j] * (xi[j] * r) }
        }
    }
}

/// Backward of rmsnormForward with a frozen weight:
/// dx[n, :] += rstd * (w * dy) - rstd^3 / C * x * sum_j(w_j dy_j x_j).
/// dy, x, dx [N, C]; rstd [N] from the forward pass.
public func rmsnormBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                            weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, rows n: Int, cols c: Int) {
    parallelChunks(n, minChunk: 64) { range in
        for i in range {
            let xi = x + i * c, dyi = dy + i * c, dxi = dx + i * c
            let r = rstd[i]
            var dot: Float = 0
            for j in 0..<c { dot += weight[j] * dyi[j] * xi[j] }
            let k = r * r * r * dot / Float(c)
            for j in 0..<c { dxi[j] += r * weight[j] * dyi[j] - k * xi[j] }
        }
    }
}
