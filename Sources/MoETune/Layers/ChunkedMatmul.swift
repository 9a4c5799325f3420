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
enum ChunkedMatmul {
    /// Floats of dequantized weight per chunk (tests lower it to force several chunks).
    nonisolated(unsafe) static var chunkFloats = 65536
    /// Rows per chunk: about chunkFloats floats of scratch.
    static func chunkRows(_ w: some RowDequantizing) -> Int { max(1, min(w.rows, chunkFloats / max(w.cols, 1))) }

    static let scratch = PerWorkerScratch(minimumCount: 65536)

    /// y [N, out] (+)= x [N, in] W^T.
    static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight w: some RowDequantizing,
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
    static func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, weight w: some RowDequantizing,
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
