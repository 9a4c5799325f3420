import Foundation
import MoEFormats
import MoEText

/// A frozen linear weight [rows, cols] kept in a ggml block format (Q4_0, Q4_K, Q8_0, …)
/// as a GGUF file stores it: each row is cols / blockSize blocks of typeSize bytes, rows in
/// Hugging Face order (llama.cpp's q/k permutation already undone by moving whole rows).
/// Only the products read it, dequantizing a chunk of rows at a time (ChunkedMatmul), so the
/// weight takes the memory of its file.
public final class GGMLWeight: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let rowBytes: Int
    public let data: UnsafeMutableRawPointer

    /// Copies the rows of `src` (GGUF row order) so that row r is source row `sourceRow(r)`.
    package init(type: GGMLType, rows: Int, cols: Int, src: UnsafeRawPointer, sourceRow: (Int) -> Int) {
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

extension GGMLWeight: RowDequantizing {}
