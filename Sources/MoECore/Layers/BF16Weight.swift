import CKernels
import Foundation
import MoEFormats
import MoEText

/// A frozen linear weight [rows, cols] kept in bfloat16 (`base_dtype: bf16`): half the memory
/// of fp32. Only the products read it: ChunkedMatmul widens a chunk of rows at a time to fp32
/// (exact: bf16 is the top half of an fp32) into per-worker scratch and multiplies it with
/// sgemm, so the arithmetic is fp32 on the bf16-rounded weight, with fp32 accumulation.
public final class BF16Weight: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    /// Row-major bf16 bit patterns, rows * cols of them.
    public let bits: UnsafeMutablePointer<UInt16>

    private init(rows: Int, cols: Int) {
        self.rows = rows; self.cols = cols
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(1, rows * cols) * 2, alignment: 64)
        bits = raw.bindMemory(to: UInt16.self, capacity: max(1, rows * cols))
    }

    deinit { bits.deallocate() }

    /// Rounds x [rows, cols] (fp32) to the nearest bf16, ties to even (as torch's
    /// `.to(torch.bfloat16)`; a NaN stays a quiet NaN of the same sign, as gguf writes it).
    public convenience init(rounding x: UnsafePointer<Float>, rows: Int, cols: Int) {
        self.init(rows: rows, cols: cols)
        let dst = bits
        parallelChunks(rows * cols, minChunk: 1 << 16) { range in
            for i in range { dst[i] = FloatConversion.floatToBF16(x[i]) }
        }
    }

    /// Takes stored bf16 values (little-endian, a safetensors BF16 tensor or GGUF BF16 rows)
    /// as they are, without an fp32 copy: row r is source row `sourceRow(r)`.
    public convenience init(stored src: UnsafeRawPointer, rows: Int, cols: Int, sourceRow: (Int) -> Int = { $0 }) {
        self.init(rows: rows, cols: cols)
        for r in 0..<rows {
            UnsafeMutableRawPointer(bits + r * cols).copyMemory(from: src + sourceRow(r) * cols * 2, byteCount: cols * 2)
        }
        #if _endian(big)
        for i in 0..<(rows * cols) { bits[i] = UInt16(littleEndian: bits[i]) }
        #endif
    }

    public var byteCount: Int { rows * cols * 2 }

    /// Writes rows r0..<r1 as fp32 into dst [(r1 - r0), cols] with CKernels' widening kernel
    /// (bf16.c: AVX-512, AVX2 or scalar, chosen at run time), split over the workers.
    public func dequantizeRows(_ r0: Int, _ r1: Int, into dst: UnsafeMutablePointer<Float>) {
        let start = r0 * cols, n = (r1 - r0) * cols, src = bits
        parallelChunks(n, minChunk: 1 << 15) { range in
            mt_bf16_widen(dst + range.lowerBound, src + start + range.lowerBound, range.count)
        }
    }
}

extension BF16Weight: RowDequantizing {}
