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

/// The skinny LoRA kernel (CKernels' lora_gemm.c, called by LoRAGemm) against a float64
/// reference on ragged shapes: every transpose combination, rows not a multiple of the
/// 12/6/4-row blocks, widths not a multiple of 8 or 16 and above the 64-column block, K above
/// the packed block's depth (4096 / width), leading dimensions wider than the matrix (and a
/// multiple of 1024 floats, the 6-row path), alpha and beta as LoRA uses them.
final class LoRAGemmTests: XCTestCase {
    private func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_000) / 1_000_000 - 1
        }
    }

    /// Every kernel this CPU has (scalar, AVX2+FMA): within 2e-6 of the largest value of the
    /// float64 result (fp32 sums of up to 1100 products); beta = 0 must not read C (NaN there).
    func testKernelsMatchFloat64() {
        let shapes: [(m: Int, n: Int, k: Int, pad: Int)] = [
            (1, 1, 1, 0), (13, 8, 37, 3), (128, 8, 512, 0), (25, 3, 600, 1), (8, 70, 129, 5),
            (7, 17, 8, 0), (31, 256, 8, 2), (12, 9, 1100, 0), (20, 8, 100, 1024 - 100), (6, 64, 65, 0),
        ]
        var checked = 0
        for (m, n, k, pad) in shapes {
            for transA in [false, true] {
                for transB in [false, true] {
                    // Stored shapes: A [m, k] or [k, m]; B [k, n] or [n, k]; row strides + pad.
                    let aCols = transA ? m : k, aRows = transA ? k : m, lda = aCols + pad
                    let bCols = transB ? k : n, bRows = transB ? n : k, ldb = bCols + pad
                    let ldc = n + pad
                    let a = values(aRows * lda, seed: UInt64(m * 31 + k)), b = values(bRows * ldb, seed: UInt64(n * 7 + k))
                    let c0 = values(m * ldc, seed: 5)
                    for (alpha, beta) in [(Float(1), Float(0)), (2, 1), (0.5, 0.25)] {
                        var ref = [Double](repeating: 0, count: m * n)
                        for i in 0..<m {
                            for j in 0..<n {
                                var s = 0.0
                                for kk in 0..<k {
                                    let av = transA ? a[kk * lda + i] : a[i * lda + kk]
                                    let bv = transB ? b[j * ldb + kk] : b[kk * ldb + j]
                                    s += Double(av) * Double(bv)
                                }
                                ref[i * n + j] = Double(alpha) * s + (beta == 0 ? 0 : Double(beta) * Double(c0[i * ldc + j]))
                            }
                        }
                        let scale = max(ref.map(abs).max()!, 1e-30)
                        for kernel in 0..<2 where mt_lora_kernel_supported(Int32(kernel)) == 1 {
                            var c = beta == 0 ? [Float](repeating: .nan, count: m * ldc) : c0
                            if beta == 0 { for i in 0..<m { for j in n..<ldc { c[i * ldc + j] = c0[i * ldc + j] } } }
                            XCTAssertEqual(mt_lora_gemm_with(Int32(kernel), transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha,
                                                             a, lda, b, ldb, beta, &c, ldc), 0)
                            var worst = 0.0
                            for i in 0..<m {
                                for j in 0..<n { worst = max(worst, abs(Double(c[i * ldc + j]) - ref[i * n + j]) / scale) }
                                // Columns past n (the padding of C) are left alone.
                                for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j]) }
                            }
                            XCTAssertLessThan(worst, 2e-6, "kernel \(kernel) \(m)x\(n)x\(k) pad \(pad) tA \(transA) tB \(transB) beta \(beta)")
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThanOrEqual(checked, shapes.count * 12)
        print("LoRA GEMM kernel dispatched: \(String(cString: mt_lora_kernel()))")
    }

    /// LoRAGemm (the kernel) against BLAS.gemm (OpenBLAS), on an adapter's six
    /// products at a 64-expert expert's shape: within 1e-5 of the largest value.
    func testLoRAGemmMatchesOpenBLAS() {
        let rows = 37, inF = 70, outF = 45, r = 8
        let x = values(rows * inF, seed: 1), a = values(r * inF, seed: 2), bw = values(outF * r, seed: 3)
        let dy = values(rows * outF, seed: 4)
        // (transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, ldc)
        let cases: [(BLAS.Transpose, BLAS.Transpose, Int, Int, Int, Float, [Float], Int, [Float], Int, Float)] = [
            (.none, .transpose, rows, r, inF, 1, x, inF, a, inF, 0),
            (.transpose, .none, outF, r, rows, 2, dy, outF, values(rows * r, seed: 5), r, 1),
            (.none, .none, rows, r, outF, 2, dy, outF, bw, r, 0),
            (.transpose, .none, r, inF, rows, 1, values(rows * r, seed: 6), r, x, inF, 1),
            (.none, .none, rows, inF, r, 1, values(rows * r, seed: 7), r, a, inF, 1),
        ]
        for (i, t) in cases.enumerated() {
            let c0 = values(t.2 * t.3, seed: UInt64(10 + i))
            var viaBLAS = c0, viaKernel = c0
            BLAS.gemm(t.0, t.1, m: t.2, n: t.3, k: t.4, alpha: t.5, a: t.6, lda: t.7, b: t.8, ldb: t.9, beta: t.10,
                      c: &viaBLAS, ldc: t.3)
            // Below BLAS.splitThreshold: LoRAGemm takes the kernel.
            XCTAssertTrue(LoRAGemm.useKernel && t.2 * t.3 * t.4 < BLAS.splitThreshold)
            LoRAGemm.gemm(t.0, t.1, m: t.2, n: t.3, k: t.4, alpha: t.5, a: t.6, lda: t.7, b: t.8, ldb: t.9,
                          beta: t.10, c: &viaKernel, ldc: t.3)
            let scale = Double(viaBLAS.map(abs).max()!)
            let e = zip(viaBLAS, viaKernel).map { Double(abs($0 - $1)) }.max()! / scale
            XCTAssertLessThan(e, 1e-5, "product \(i)")
        }
    }
}

extension LoRAGemmTests {
    /// Review: MOE_TUNE_LORA_KERNEL=foo (or SCALAR, which the Swift side lowercased and the C
    /// side compared exactly) was ignored silently; MOE_TUNE_HEAD_CHUNKS=off meant chunked.
    func testEnvironmentChoicesAreCheckedInOneLine() throws {
        for v in ["blas", "scalar"] { XCTAssertNoThrow(try EnvironmentSwitches.check(environment: ["MOE_TUNE_LORA_KERNEL": v])) }
        XCTAssertNoThrow(try EnvironmentSwitches.check(environment: [:]))
        for v in ["foo", "SCALAR", "Blas", "", "avx2"] {
            assertMoETuneError(try EnvironmentSwitches.check(environment: ["MOE_TUNE_LORA_KERNEL": v]), contains: ["MOE_TUNE_LORA_KERNEL=\(v):", "blas or scalar"])
        }
        XCTAssertEqual(try runOptions([:]).headChunks, true)
        XCTAssertEqual(try runOptions(["MOE_TUNE_HEAD_CHUNKS": "1"]).headChunks, true)
        XCTAssertEqual(try runOptions(["MOE_TUNE_HEAD_CHUNKS": "0"]).headChunks, false)
        for v in ["off", "false", "", "00"] {
            assertMoETuneError(try runOptions(["MOE_TUNE_HEAD_CHUNKS": v]), contains: ["MOE_TUNE_HEAD_CHUNKS=\(v):"])
        }
    }
}
