import CKernels
import Foundation
import MoEFormats
import MoEText

/// A frozen fp32 weight W [out, in] packed once, at load, into the panel layout of
/// CKernels' packed GEMM (Sources/CKernels/packed_gemm.c: AVX2+FMA 6x16 register block),
/// instead of being re-packed by OpenBLAS in every product of every step:
///   forward   y [N, out] (+)= x [N, in] W^T   from panels of 16 rows of W   (out/16 x in x 16)
///   backward dx [N, in]  (+)= dy [N, out] W   from panels of 16 columns of W (in/16 x out x 16)
/// Each copy is the size of W (rounded up to 16 rows/columns). The original stays readable
/// (merge and export read it); an fp32 original mapped from the file has its pages released
/// after packing (they come back from the file when read), so with both copies a weight holds
/// twice its fp32 size resident; a converted (bf16/f16) original stays: three times.
///
/// Which weights: fp32, both dimensions at most `maxDimension` (4096) and the CPU has AVX2+FMA.
/// On the 2-core AVX2 EPYC (scripts/bench_packed_gemm.c, README "Speed") the packed kernel
/// was 1-19% faster than single-threaded OpenBLAS on bench-small's and bench-64's q/k/v/o and
/// expert shapes, and 12-17% slower on the 8000 x 512 LM head, which therefore stays on
/// OpenBLAS. In the whole training step the gain was within the noise of that loaded machine
/// while peak RSS grew by the two copies, so packing is off unless asked for:
/// `MOE_TUNE_PREPACK=1` packs both copies (the mapped fp32 pages are then released),
/// `MOE_TUNE_PREPACK=forward` the forward copy only (input gradients stay on OpenBLAS);
/// unset or `0`: off.
public final class PackedWeight: @unchecked Sendable {
    package let out: Int
    package let inFeatures: Int
    package let forwardPanels: FloatBuffer
    package let backwardPanels: FloatBuffer?

    public enum Mode: String, Sendable { case off = "0", both = "1", forward }
    public static let mode: Mode = {
        guard let v = ProcessInfo.processInfo.environment["MOE_TUNE_PREPACK"]?.lowercased() else { return .off }
        return Mode(rawValue: v) ?? (v == "on" || v == "true" ? .both : .off)
    }()
    package static let maxDimension = 4096
    /// Whether the packed kernel is vectorised here (the scalar fallback never beats OpenBLAS).
    package static let cpuHasKernel: Bool = mt_packed_kernel_supported(1) == 1

    /// The packed copies of w [out, in], or nil where packing is off or not measured to win.
    package static func pack(_ w: UnsafePointer<Float>, out: Int, in k: Int, mode: Mode = PackedWeight.mode) -> PackedWeight? {
        guard mode != .off, cpuHasKernel, out > 0, k > 0, out <= maxDimension, k <= maxDimension else { return nil }
        return PackedWeight(w, out: out, in: k, backward: mode == .both)
    }

    package init(_ w: UnsafePointer<Float>, out: Int, in k: Int, backward: Bool) {
        self.out = out
        inFeatures = k
        // Forward B [in, out]: B(kk, j) = W[j, kk].
        forwardPanels = FloatBuffer(count: mt_packed_size(k, out), zeroed: false)
        mt_pack_b(forwardPanels.pointer, w, k, out, 1, k)
        if backward {
            // Backward B [out, in]: B(kk, j) = W[kk, j].
            let b = FloatBuffer(count: mt_packed_size(out, k), zeroed: false)
            mt_pack_b(b.pointer, w, out, k, k, 1)
            backwardPanels = b
        } else {
            backwardPanels = nil
        }
    }

    /// y [N, out] (+)= x [N, in] W^T.
    @inline(__always)
    package func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, accumulate: Bool) {
        PackedWeight.gemm(m: n, n: out, k: inFeatures, a: x, panels: forwardPanels.pointer, c: y, accumulate: accumulate)
    }

    /// dx [N, in] (+)= dy [N, out] W; false when there is no backward copy (use OpenBLAS).
    @inline(__always)
    package func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int, accumulate: Bool) -> Bool {
        guard let b = backwardPanels else { return false }
        PackedWeight.gemm(m: n, n: inFeatures, k: out, a: dy, panels: b.pointer, c: dx, accumulate: accumulate)
        return true
    }

    /// C [m, n] (+)= A [m, k] B, split over the workers as BLAS.gemm splits: by rows of A and C
    /// when m >= n, else by whole 16-column panels of B and C.
    @inline(__always)
    package static func gemm(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, panels: UnsafePointer<Float>,
                     c: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if m == 0 { return }
        let acc: Int32 = accumulate ? 1 : 0
        let parts = !Parallel.inRegion && m * n * k >= BLAS.splitThreshold ? BLAS.cores : 1
        if parts <= 1 {
            mt_packed_gemm(m, n, k, a, k, panels, c, n, acc)
        } else if m >= n {
            let per = (m + parts - 1) / parts
            Parallel.run(parts) { p in
                let lo = p * per, rows = min(m, lo + per) - lo
                guard rows > 0 else { return }
                mt_packed_gemm(rows, n, k, a + lo * k, k, panels, c + lo * n, n, acc)
            }
        } else {
            let panelCount = (n + 15) / 16, per = (panelCount + parts - 1) / parts
            Parallel.run(parts) { p in
                let p0 = p * per, p1 = min(panelCount, p0 + per)
                guard p0 < p1 else { return }
                let cols = min(n, p1 * 16) - p0 * 16
                mt_packed_gemm(m, cols, k, a, k, panels + p0 * 16 * k, c + p0 * 16, n, acc)
            }
        }
    }
}

extension Matrix {
    /// This weight with its packed copies (PackedWeight) where packing is on and measured to
    /// win for its shape; the same weight otherwise (and for NF4/ggml weights).
    public func prepacked(mode: PackedWeight.Mode = PackedWeight.mode) -> Matrix {
        guard !isQuantized, packed == nil, let p = PackedWeight.pack(pointer, out: rows, in: cols, mode: mode) else { return self }
        return Matrix(pointer, rows: rows, cols: cols, packed: p)
    }
}
