import Foundation
import MoEFormats
import MoEText

/// A compressed frozen weight W [out, in] held transposed inside a fused tensor S [rows, cols]
/// (bitsandbytes' NF4 of GPT-OSS's experts, each fused tensor quantized whole):
///   W[o, k] = S[rowOffset + k, stride * o + part].
/// gate_up_proj [E, H, 2I] as S [E*H, 2I]: expert e's gate is rowOffset e*H, stride 2, part 0,
/// its up part 1; down_proj [E, I, H] as S [E*I, H]: rowOffset e*I, stride 1.
/// The products dequantize S's rows a chunk at a time into per-worker scratch (as
/// ChunkedMatmul does for row-major weights), pick this weight's columns, and run sgemm;
/// no fp32 copy of a whole weight exists.
public final class TransposedWeight: @unchecked Sendable {
    package let storage: any RowDequantizing
    package let rowOffset: Int
    public let outFeatures: Int
    public let inFeatures: Int
    package let stride: Int
    package let part: Int

    public init(storage: any RowDequantizing, rowOffset: Int, inFeatures: Int, stride: Int, part: Int) {
        precondition(stride >= 1 && part < stride && storage.cols % stride == 0 && rowOffset + inFeatures <= storage.rows)
        self.storage = storage; self.rowOffset = rowOffset; self.inFeatures = inFeatures
        self.outFeatures = storage.cols / stride; self.stride = stride; self.part = part
    }

    package static let scratch = PerWorkerScratch(minimumCount: 65536)

    /// Rows of S per chunk, and the scratch: raw rows [kc, cols] then W^T's rows [kc, out].
    private func chunk() -> (Int, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let cols = storage.cols
        let kc = max(1, min(inFeatures, ChunkedMatmul.chunkFloats / max(cols, 1)))
        let raw = TransposedWeight.scratch.pointer(count: kc * (cols + outFeatures))
        return (kc, raw, raw + kc * cols)
    }

    /// wt [k1 - k0, out] = W^T rows k0..<k1.
    private func load(_ k0: Int, _ k1: Int, raw: UnsafeMutablePointer<Float>, wt: UnsafeMutablePointer<Float>) {
        storage.dequantizeRows(rowOffset + k0, rowOffset + k1, into: raw)
        let (cols, out) = (storage.cols, outFeatures)
        for k in 0..<(k1 - k0) {
            let src = raw + k * cols + part, dst = wt + k * out
            for o in 0..<out { dst[o] = src[stride * o] }
        }
    }

    /// y [N, out] (+)= x [N, in] W^T.
    package func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, accumulate: Bool) {
        let (kc, raw, wt) = chunk()
        if !accumulate && inFeatures == 0 { y.update(repeating: 0, count: n * outFeatures) }
        for k0 in Swift.stride(from: 0, to: inFeatures, by: kc) {
            let k1 = min(inFeatures, k0 + kc)
            load(k0, k1, raw: raw, wt: wt)
            BLAS.gemm(.none, .none, m: n, n: outFeatures, k: k1 - k0, a: x + k0, lda: inFeatures, b: wt, ldb: outFeatures,
                      beta: (accumulate || k0 > 0) ? 1 : 0, c: y, ldc: outFeatures)
        }
    }

    /// dx [N, in] (+)= dy [N, out] W.
    package func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, accumulate: Bool) {
        let (kc, raw, wt) = chunk()
        for k0 in Swift.stride(from: 0, to: inFeatures, by: kc) {
            let k1 = min(inFeatures, k0 + kc)
            load(k0, k1, raw: raw, wt: wt)
            BLAS.gemm(.none, .transpose, m: n, n: k1 - k0, k: outFeatures, a: dy, lda: outFeatures, b: wt, ldb: outFeatures,
                      beta: accumulate ? 1 : 0, c: dx + k0, ldc: inFeatures)
        }
    }
}
