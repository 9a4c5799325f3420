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
        case .ggml(let g):
            guard g.type.blockSize > 1, mt_qdot_activation_bytes(Int32(g.type.rawValue), g.cols) > 0 else { return false }
            withOutput(y, rows: n, cols: w.rows, accumulate: accumulate) { out in ggml(out: out, x: x, rows: n, weight: g) }
            return true
        case .nf4(let q):
            withOutput(y, rows: n, cols: w.rows, accumulate: accumulate) { out in nf4(out: out, x: x, rows: n, weight: q) }
            return true
        case .bf16(let b):
            withOutput(y, rows: n, cols: w.rows, accumulate: accumulate) { out in
                splitRows(b.rows, cols: b.cols) { r0, r1 in
                    for i in 0..<n { mt_bf16_matvec(out + i * b.rows + r0, b.bits, r0, r1, b.cols, x + i * b.cols) }
                }
            }
            return true
        case .transposed:
            return false
        }
    }

    /// Scratch of the products' output when they must be added to y (accumulate).
    private static let sums = PerWorkerScratch(minimumCount: 1 << 12)

    /// Runs body on y itself, or on scratch [rows, cols] that is then added to y.
    @inline(__always)
    private static func withOutput(_ y: UnsafeMutablePointer<Float>, rows n: Int, cols: Int, accumulate: Bool,
                                   _ body: (UnsafeMutablePointer<Float>) -> Void) {
        guard accumulate else { body(y); return }
        let t = sums.pointer(count: n * cols)
        body(t)
        for i in 0..<(n * cols) { y[i] += t[i] }
    }

    /// out [n, rows] = x [n, cols] W^T for ggml blocks: each x row rounded to 8 bits per
    /// block (mt_qdot_quantize_activation), then integer products block by block.
    private static func ggml(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight g: GGMLWeight) {
        let type = Int32(g.type.rawValue), stride = mt_qdot_activation_bytes(type, g.cols)
        let xq = UnsafeMutableRawPointer(activations.pointer(count: (n * stride + 3) / 4))
        for i in 0..<n { mt_qdot_quantize_activation(type, x + i * g.cols, xq + i * stride, g.cols) }
        splitRows(g.rows, cols: g.cols) { r0, r1 in
            mt_qdot_matmat(type, g.data, g.rowBytes, r0, r1, g.cols, xq, stride, n, out + r0, g.rows)
        }
    }

    /// out [n, rows] = x [n, cols] W^T for NF4, each weight value widened in registers.
    private static func nf4(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight q: NF4Weight) {
        NF4Weight.code.withUnsafeBufferPointer { code in
            q.nestedMap.withUnsafeBufferPointer { map in
                q.nestedAbsmax.withUnsafeBufferPointer { nested in
                    splitRows(q.rows, cols: q.cols) { r0, r1 in
                        for i in 0..<n {
                            mt_nf4_matvec(out + i * q.rows + r0, q.packed, q.rows, q.cols, r0, r1, code.baseAddress, q.absmax,
                                          q.absmaxCodes, map.baseAddress, nested.baseAddress, q.offset, x + i * q.cols)
                        }
                    }
                }
            }
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
