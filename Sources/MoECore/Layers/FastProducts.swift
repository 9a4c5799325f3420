import Foundation
import COpenBLAS
import CKernels
import MoEFormats
import MoEText

/// How a linear product reads a frozen weight.
public enum ProductPath: Sendable {
    /// Widened to fp32 and multiplied by sgemm: the training pass's products, the
    /// reference of every test (`generate --exact`).
    case exact
    /// The decoder's products: a few rows (`FastProducts.maxRows`) against a compressed
    /// weight read once in its own blocks — ggml types with the activation rounded to 8 bits
    /// per block as llama.cpp does, NF4 and bf16 widened per value in registers, fp32 by
    /// sgemv. More rows go the exact way (a prompt's prefill is a GEMM either way).
    case fast
}

/// The decode path's matrix-vector products, split by output rows over the workers.
/// Allocates nothing once the per-worker scratch has grown to the largest activation.
package enum FastProducts {
    /// Products with more rows than this take the exact (GEMM) path.
    package static let maxRows = 16

    /// Bytes of the 8-bit activations of each worker (one quantized copy per call).
    private static let activations = PerWorkerScratch(minimumCount: 1 << 14)

    /// y [n, out] (+)= x [n, in] W^T for n <= maxRows, or false when this weight's storage
    /// has no fast product (the caller then takes the exact path).
    @inline(__always)
    package static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                                weight w: Matrix, accumulate: Bool) -> Bool {
        guard n >= 1, n <= maxRows else { return false }
        switch w.storage {
        case .fp32, .packed:
            rowsF32(y: y, x: x, rows: n, weight: w, accumulate: accumulate)
            return true
        case .nf4, .ggml, .bf16, .transposed:
            return false
        }
    }

    /// y [n, out] (+)= x [n, in] W^T, each weight row read once for the n rows, the output
    /// rows split over the workers.
    private static func rowsF32(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight w: Matrix,
                                accumulate: Bool) {
        let cols = w.cols, out = w.rows
        splitRows(out, cols: cols) { r0, r1 in
            mt_rows_f32(w.pointer, r0, r1, cols, x, n, cols, y + r0, out, accumulate ? 1 : 0)
        }
    }

    /// Runs body(r0, r1) over contiguous row ranges, one per worker when the weight is large
    /// enough to be worth it (about 64 KiB of fp32 values per worker).
    @inline(__always)
    package static func splitRows(_ rows: Int, cols: Int, _ body: (Int, Int) -> Void) {
        let minRows = max(1, 16384 / max(cols, 1))
        parallelChunks(rows, minChunk: minRows) { range in body(range.lowerBound, range.upperBound) }
    }
}
