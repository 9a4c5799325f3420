import Foundation

/// A frozen linear weight [rows, cols] kept in a ggml block format (Q4_0, Q4_K, Q8_0, …)
/// as a GGUF file stores it: each row is cols / blockSize blocks of typeSize bytes, rows in
/// Hugging Face order (llama.cpp's q/k permutation already undone by moving whole rows).
/// Only the products read it, dequantizing a chunk of rows at a time (GGMLMatmul), so the
/// weight takes the memory of its file.
public final class GGMLWeight: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let rowBytes: Int
    public let data: UnsafeMutableRawPointer

    /// Copies the rows of `src` (GGUF row order) so that row r is source row `sourceRow(r)`.
    init(type: GGMLType, rows: Int, cols: Int, src: UnsafeRawPointer, sourceRow: (Int) -> Int) {
        self.type = type; self.rows = rows; self.cols = cols
        rowBytes = type.bytes(count: cols)
        data = UnsafeMutableRawPointer.allocate(byteCount: max(1, rows * rowBytes), alignment: 64)
        for r in 0..<rows { (data + r * rowBytes).copyMemory(from: src + sourceRow(r) * rowBytes, byteCount: rowBytes) }
    }

    deinit { data.deallocate() }

    public var byteCount: Int { rows * rowBytes }

    /// Writes rows r0..<r1 as fp32 into dst [(r1 - r0), cols].
    public func dequantizeRows(_ r0: Int, _ r1: Int, into dst: UnsafeMutablePointer<Float>) {
        parallelChunks(r1 - r0, minChunk: max(1, 16384 / max(cols, 1))) { range in
            for i in range {
                GGMLDequantize.run(self.type, self.data + (r0 + i) * self.rowBytes, count: self.cols, into: dst + i * self.cols)
            }
        }
    }
}

/// Products with ggml-format weights, as NF4Matmul does for NF4: rows of W are dequantized
/// a chunk at a time into a small scratch buffer that feeds sgemm, so no fp32 copy of a
/// whole weight ever exists.
enum GGMLMatmul {
    /// Rows per chunk: about 64K floats of scratch.
    static func chunkRows(_ w: GGMLWeight) -> Int { max(1, min(w.rows, 65536 / max(w.cols, 1))) }

    /// One scratch per worker: products run concurrently inside parallel regions (MoE
    /// experts as tasks), as NF4Matmul's do.
    static let scratch = PerWorkerScratch(minimumCount: 65536)

    static func scratchFor(_ count: Int) -> UnsafeMutablePointer<Float> { scratch.pointer(count: count) }

    /// y [N, out] (+)= x [N, in] W^T.
    static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, weight w: GGMLWeight, accumulate: Bool) {
        let r = chunkRows(w)
        let buf = scratchFor(r * w.cols)
        for r0 in stride(from: 0, to: w.rows, by: r) {
            let r1 = min(w.rows, r0 + r)
            w.dequantizeRows(r0, r1, into: buf)
            BLAS.gemm(.none, .transpose, m: n, n: r1 - r0, k: w.cols, a: x, lda: w.cols, b: buf, ldb: w.cols,
                      beta: accumulate ? 1 : 0, c: y + r0, ldc: w.rows)
        }
    }

    /// dx [N, in] (+)= dy [N, out] W.
    static func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, weight w: GGMLWeight, accumulate: Bool) {
        let r = chunkRows(w)
        let buf = scratchFor(r * w.cols)
        for r0 in stride(from: 0, to: w.rows, by: r) {
            let r1 = min(w.rows, r0 + r)
            w.dequantizeRows(r0, r1, into: buf)
            BLAS.gemm(.none, .none, m: n, n: w.cols, k: r1 - r0, a: dy + r0, lda: w.rows, b: buf, ldb: w.cols,
                      beta: (accumulate || r0 > 0) ? 1 : 0, c: dx, ldc: w.cols)
        }
    }
}
