import Foundation
import MoEFormats
import MoEText

/// A frozen linear weight [rows, cols] kept in a ggml block format (Q4_0, Q4_K, Q8_0, …)
/// as a GGUF file stores it: each row is cols / blockSize blocks of typeSize bytes, rows in
/// Hugging Face order (llama.cpp's q/k permutation already undone by moving whole rows).
/// Only the products read it, dequantizing a chunk of rows at a time (ChunkedMatmul), so the
/// weight takes the memory of its file. A weight whose rows are in the file's order points
/// into the file's read-only mapping (`init(mapped:)`, kept alive by `owner`): its pages
/// are the file's page cache, not a copy; a permuted one is copied.
public final class GGMLWeight: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let rowBytes: Int
    /// rows * rowBytes bytes, read-only: an allocation of this object's, or bytes of `owner`.
    public let data: UnsafeRawPointer
    /// What `data` lives in when this object does not own it (the file's mapping).
    public let owner: AnyObject?

    /// Copies the rows of `src` (GGUF row order) so that row r is source row `sourceRow(r)`.
    package init(type: GGMLType, rows: Int, cols: Int, src: UnsafeRawPointer, sourceRow: (Int) -> Int) {
        self.type = type; self.rows = rows; self.cols = cols
        rowBytes = type.bytes(count: cols)
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(1, rows * rowBytes), alignment: 64)
        for r in 0..<rows { (copy + r * rowBytes).copyMemory(from: src + sourceRow(r) * rowBytes, byteCount: rowBytes) }
        data = UnsafeRawPointer(copy)
        owner = nil
    }

    /// Uses the rows at `src` where they are (no copy); `owner` holds them (a MappedFile)
    /// and is kept as long as this weight.
    package init(type: GGMLType, rows: Int, cols: Int, mapped src: UnsafeRawPointer, owner: AnyObject) {
        self.type = type; self.rows = rows; self.cols = cols
        rowBytes = type.bytes(count: cols)
        data = src
        self.owner = owner
    }

    deinit { if owner == nil { UnsafeMutableRawPointer(mutating: data).deallocate() } }

    public var byteCount: Int { rows * rowBytes }

    /// Whether the bytes are the file's mapped pages rather than a copy.
    public var isMapped: Bool { owner != nil }

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
