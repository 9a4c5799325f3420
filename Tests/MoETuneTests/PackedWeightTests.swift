import CKernels
import Foundation
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport
import XCTest

/// The pre-packed frozen weight (PackedWeight, CKernels' packed_gemm.c) against a float64
/// reference and against the OpenBLAS path it replaces, on shapes that exercise every edge:
/// rows not a multiple of 6, widths not a multiple of 16, K above the kernel's K block (256),
/// accumulate on and off, products split over the workers by rows and by columns.
final class PackedWeightTests: XCTestCase {
    /// Deterministic values in [-1, 1).
    private func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_000) / 1_000_000 - 1
        }
    }

    /// Worst |got - ref| / max|ref| over c [m, n] against sum_k a[i, k] b(k, j) (+ c0) in float64.
    private func worst(_ got: [Float], m: Int, n: Int, k: Int, a: [Float], b: (Int, Int) -> Float, c0: [Float]?) -> Double {
        var ref = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = c0.map { Double($0[i * n + j]) } ?? 0
                for kk in 0..<k { s += Double(a[i * k + kk]) * Double(b(kk, j)) }
                ref[i * n + j] = s
            }
        }
        let scale = ref.map(abs).max() ?? 1
        return zip(got, ref).map { abs(Double($0) - $1) }.max()! / scale
    }

    /// Every kernel this CPU has (scalar, AVX2+FMA) on awkward shapes, fp32 against float64:
    /// within 1e-6 of the largest value (fp32 sums of up to 600 products).
    func testKernelsMatchFloat64() {
        for (m, n, k) in [(1, 1, 1), (7, 17, 5), (13, 33, 300), (6, 16, 256), (20, 40, 600)] {
            let a = values(m * k, seed: UInt64(m)), b = values(k * n, seed: UInt64(n + 7)), c0 = values(m * n, seed: 3)
            var panels = [Float](repeating: .nan, count: mt_packed_size(k, n))
            mt_pack_b(&panels, b, k, n, n, 1)   // B [k, n] row-major
            for kernel in 0..<2 where mt_packed_kernel_supported(Int32(kernel)) == 1 {
                for accumulate in [false, true] {
                    var c = accumulate ? c0 : [Float](repeating: .nan, count: m * n)
                    XCTAssertEqual(mt_packed_gemm_with(Int32(kernel), m, n, k, a, k, panels, &c, n, accumulate ? 1 : 0), 0)
                    let e = worst(c, m: m, n: n, k: k, a: a, b: { b[$0 * n + $1] }, c0: accumulate ? c0 : nil)
                    XCTAssertLessThan(e, 1e-6, "kernel \(kernel) m \(m) n \(n) k \(k) accumulate \(accumulate)")
                }
            }
        }
        print("packed GEMM kernel dispatched: \(String(cString: mt_packed_kernel()))")
    }

    /// linearForward / linearBackwardInput through a packed weight against the same calls on
    /// the plain weight (OpenBLAS): within 1e-5 relative to the largest value, for shapes below
    /// and above the split threshold (split by rows, and by 16-column panels).
    func testPackedLinearMatchesOpenBLAS() throws {
        guard PackedWeight.cpuHasKernel else { throw XCTSkip("no AVX2+FMA: weights are not packed on this CPU") }
        for (rows, out, inF) in [(5, 19, 37), (300, 130, 70), (40, 530, 300), (1030, 96, 50)] {
            let wv = values(out * inF, seed: UInt64(out)), x = values(rows * inF, seed: 11), dy = values(rows * out, seed: 13)
            let y0 = values(rows * out, seed: 17), dx0 = values(rows * inF, seed: 19)
            try wv.withUnsafeBufferPointer { wp in
                let plain = Matrix(wp.baseAddress!, rows: out, cols: inF)
                let packed = plain.prepacked(mode: .both)
                XCTAssertNotNil(packed.packed)
                XCTAssertNil(plain.prepacked(mode: .off).packed)
                XCTAssertNotNil(plain.prepacked(mode: .forward).packed)
                for accumulate in [false, true] {
                    var ya = y0, yb = y0, dxa = dx0, dxb = dx0
                    linearForward(y: &ya, x: x, rows: rows, weight: plain, accumulate: accumulate)
                    linearForward(y: &yb, x: x, rows: rows, weight: packed, accumulate: accumulate)
                    linearBackwardInput(dx: &dxa, dy: dy, rows: rows, weight: plain, accumulate: accumulate)
                    linearBackwardInput(dx: &dxb, dy: dy, rows: rows, weight: packed, accumulate: accumulate)
                    let scaleY = Double(ya.map(abs).max()!), scaleX = Double(dxa.map(abs).max()!)
                    let ey = zip(ya, yb).map { Double(abs($0 - $1)) }.max()! / scaleY
                    let ex = zip(dxa, dxb).map { Double(abs($0 - $1)) }.max()! / scaleX
                    XCTAssertLessThan(ey, 1e-5, "forward \(rows)x\(out)x\(inF) accumulate \(accumulate)")
                    XCTAssertLessThan(ex, 1e-5, "backward \(rows)x\(out)x\(inF) accumulate \(accumulate)")
                }
                // Forward-only packing: the input gradient goes to OpenBLAS, bit-identical.
                let fwd = plain.prepacked(mode: .forward)
                var dxa = dx0, dxb = dx0
                linearBackwardInput(dx: &dxa, dy: dy, rows: rows, weight: plain, accumulate: true)
                linearBackwardInput(dx: &dxb, dy: dy, rows: rows, weight: fwd, accumulate: true)
                XCTAssertEqual(dxa, dxb)
                _ = try XCTUnwrap(packed.packed)
            }
        }
    }

    /// Shapes measured to lose (the 8000-row LM head) stay on OpenBLAS.
    func testLargeWeightsAreNotPacked() {
        let w = [Float](repeating: 0.5, count: 4097 * 2)
        w.withUnsafeBufferPointer { p in
            XCTAssertNil(Matrix(p.baseAddress!, rows: 4097, cols: 2).prepacked(mode: .both).packed)
            XCTAssertNil(Matrix(p.baseAddress!, rows: 2, cols: 4097).prepacked(mode: .both).packed)
        }
    }
}
