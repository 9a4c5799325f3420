import Foundation
import CKernels
import MoEFormats
import MoEText

/// How a linear product reads a frozen weight.
public enum ProductPath: Sendable {
    /// Widened to fp32 and multiplied by sgemm: the training pass's products, the
    /// reference of every test (`generate --exact`).
    case exact
    /// The decoder's products: a few rows (`FastProducts.maxRows`) against a compressed
    /// weight read once in its own blocks — ggml types with integer products against the
    /// activation rounded to 8 bits, as llama.cpp does (one scale per 4 values for the 32-value
    /// types; MOE_TUNE_QDOT_ACTIVATION=16: twice, the second pass the first's residual), NF4 and bf16 widened per value in registers, fp32 by
    /// sgemv. More rows go the exact way (a prompt's prefill is a GEMM either way).
    case fast
}

/// The decode path's matrix-vector products, split by output rows over the workers.
/// Allocates nothing once the per-worker scratch has grown to the largest activation. Its
/// scratch is per worker slot, as every PerWorkerScratch: one decoder runs at a time in a
/// process (two threads decoding at once would share slot 0).
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
        let t = threads
        switch w.storage {
        case .fp32:
            mt_split_rows_f32(t, w.pointer, w.rows, w.cols, x, n, w.cols, y, w.rows, accumulate ? 1 : 0)
            return true
        case .ggml(let g):
            let type = Int32(g.type.rawValue), stride = mt_qdot_activation_bytes(type, g.cols)
            guard g.type.blockSize > 1, stride > 0 else { return false }
            if RunOptions.current.qdotActivationBits == 8 {
                onePass(y: y, x: x, rows: n, weight: g, type: type, stride: stride, accumulate: accumulate)
            } else {
                twoPass(y: y, x: x, rows: n, weight: g, type: type, stride: stride, accumulate: accumulate)
            }
            return true
        case .nf4(let q):
            let out = output(y, rows: n, cols: q.rows, accumulate: accumulate)
            NF4Weight.code.withUnsafeBufferPointer { code in
                q.nestedMap.withUnsafeBufferPointer { map in
                    q.nestedAbsmax.withUnsafeBufferPointer { nested in
                        mt_split_nf4(t, q.packed, q.rows, q.cols, code.baseAddress, q.absmax, q.absmaxCodes, map.baseAddress,
                                     nested.baseAddress, q.offset, x, n, q.cols, out, q.rows)
                    }
                }
            }
            finish(y, out, count: n * q.rows)
            return true
        case .bf16(let b):
            let out = output(y, rows: n, cols: b.rows, accumulate: accumulate)
            mt_split_bf16(t, b.bits, b.rows, b.cols, x, n, b.cols, out, b.rows)
            finish(y, out, count: n * b.rows)
            return true
        case .transposed:
            return false
        }
    }

    /// The ggml product against each activation row rounded to 8 bits (ckernels.h's layout).
    @inline(__always)
    private static func onePass(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight g: GGMLWeight,
                                type: Int32, stride: Int, accumulate: Bool) {
        let xq = UnsafeMutableRawPointer(activations.pointer(count: (n * stride + 3) / 4))
        for i in 0..<n { mt_qdot_quantize_activation(type, x + i * g.cols, xq + i * stride, g.cols) }
        let out = output(y, rows: n, cols: g.rows, accumulate: accumulate)
        mt_split_qdot(threads, type, g.data, g.rowBytes, g.rows, g.cols, xq, stride, n, out, g.rows)
        finish(y, out, count: n * g.rows)
    }

    /// The ggml product with each activation row as two 8-bit activations (the row and its
    /// rounding's residual, mt_qdot_quantize_activation2): 2n activations against each weight
    /// row read once, the two products of a row added.
    @inline(__always)
    private static func twoPass(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight g: GGMLWeight,
                                type: Int32, stride: Int, accumulate: Bool) {
        let xq = UnsafeMutableRawPointer(activations.pointer(count: (2 * n * stride + 3) / 4))
        for i in 0..<n { mt_qdot_quantize_activation2(type, x + i * g.cols, xq + 2 * i * stride, g.cols) }
        let r = g.rows, out = sums.pointer(count: 2 * n * r)
        mt_split_qdot(threads, type, g.data, g.rowBytes, r, g.cols, xq, stride, 2 * n, out, r)
        for i in 0..<n {
            let a = out + 2 * i * r, b = a + r, yi = y + i * r
            if accumulate {
                for j in 0..<r { yi[j] += a[j] + b[j] }
            } else {
                for j in 0..<r { yi[j] = a[j] + b[j] }
            }
        }
    }

    /// Threads a product may use: every worker, or one inside a parallel region (an MoE
    /// expert's task).
    private static var threads: Int32 { Parallel.inRegion ? 1 : Int32(Parallel.workers) }

    /// Scratch of the products' output when they must be added to y (accumulate).
    private static let sums = PerWorkerScratch(minimumCount: 1 << 12)

    /// Where a product writes: y itself, or scratch [rows, cols] that `finish` adds to y.
    @inline(__always)
    private static func output(_ y: UnsafeMutablePointer<Float>, rows n: Int, cols: Int, accumulate: Bool)
        -> UnsafeMutablePointer<Float> {
        accumulate ? sums.pointer(count: n * cols) : y
    }

    @inline(__always)
    private static func finish(_ y: UnsafeMutablePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        if out != y { for i in 0..<count { y[i] += out[i] } }
    }
}
