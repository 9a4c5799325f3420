import Foundation
import MoEFormats
import MoEText

/// A frozen weight [rows, cols] kept compressed (NF4, ggml blocks) whose rows dequantize to
/// fp32 on demand.
public protocol RowDequantizing: AnyObject {
    var rows: Int { get }
    var cols: Int { get }
    /// Writes rows r0..<r1 as fp32 into dst [(r1 - r0), cols].
    func dequantizeRows(_ r0: Int, _ r1: Int, into dst: UnsafeMutablePointer<Float>)
}

/// Products with compressed weights: rows of W are dequantized a chunk at a time into a small
/// per-worker scratch buffer that feeds sgemm, so no fp32 copy of a whole weight ever exists
/// (MoE experts run as parallel tasks, each dequantizing its own weights).
package enum ChunkedMatmul {
    /// Floats of dequantized weight per chunk: twice one core's L2 cache in bytes (L2 / 2
    /// floats; 256Ki floats when the size is unknown; at most 1Mi), RunOptions.chunkFloats
    /// (MOE_TUNE_CHUNK_FLOATS=N) overrides (to measure; tests lower it to force several chunks). sgemm packs the chunk
    /// into its own L2-sized panels anyway; what a chunk costs is one more packing of the
    /// activations, so fewer, larger chunks win: on the 2-core EPYC (512 KiB L2) 256Ki floats
    /// took 7-11% less CPU per token of a QLoRA step than 64Ki (README, Speed).
    nonisolated(unsafe) static var chunkFloats = defaultChunkFloats
    package static let defaultChunkFloats: Int = {
        let l2 = sysconf(Int32(_SC_LEVEL2_CACHE_SIZE))
        return l2 >= 256 * 1024 ? min(l2 / 2, 1 << 20) : 1 << 18
    }()
    /// Rows per chunk: about chunkFloats floats of scratch.
    package static func chunkRows(_ w: some RowDequantizing) -> Int { max(1, min(w.rows, chunkFloats / max(w.cols, 1))) }

    package static let scratch = PerWorkerScratch(minimumCount: 65536)

    /// y [N, out] (+)= x [N, in] W^T.
    package static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight w: some RowDequantizing,
                        accumulate: Bool) {
        let r = chunkRows(w)
        let buf = scratch.pointer(count: r * w.cols)
        for r0 in stride(from: 0, to: w.rows, by: r) {
            let r1 = min(w.rows, r0 + r)
            w.dequantizeRows(r0, r1, into: buf)
            BLAS.gemm(.none, .transpose, m: n, n: r1 - r0, k: w.cols, a: x, lda: w.cols, b: buf, ldb: w.cols,
                      beta: accumulate ? 1 : 0, c: y + r0, ldc: w.rows)
        }
    }

    /// dx [N, in] (+)= dy [N, out] W.
    package static func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, weight w: some RowDequantizing,
                              accumulate: Bool) {
        let r = chunkRows(w)
        let buf = scratch.pointer(count: r * w.cols)
        for r0 in stride(from: 0, to: w.rows, by: r) {
            let r1 = min(w.rows, r0 + r)
            w.dequantizeRows(r0, r1, into: buf)
            BLAS.gemm(.none, .none, m: n, n: w.cols, k: r1 - r0, a: dy + r0, lda: w.rows, b: buf, ldb: w.cols,
                      beta: (accumulate || r0 > 0) ? 1 : 0, c: dx, ldc: w.cols)
        }
    }
}
