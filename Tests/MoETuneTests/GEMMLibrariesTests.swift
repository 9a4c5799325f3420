import COpenBLAS
import Foundation
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport
import XCTest

/// The optional GEMM libraries (BLIS, oneDNN; Layers/GEMMLibraries.swift) against OpenBLAS,
/// the reference: every transpose, ragged shapes with the step's small dimensions (8, 16, 64,
/// 128), padded leading dimensions, alpha and beta, C filled with NaN where beta = 0 (BLAS
/// semantics: C is not read). Tolerance 1e-5 of the largest |C| (the sums differ in order
/// only: a few 1e-7 here). A library that is not installed is skipped, named, loudly.
final class GEMMLibrariesTests: XCTestCase {
    private func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_000) / 1_000_000 - 1
        }
    }

    private typealias Call = (_ ta: Bool, _ tb: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                              _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                              _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) -> Void

    private func check(_ name: String, _ call: Call) {
        let shapes = [(37, 8, 53), (64, 130, 8), (8, 77, 129), (129, 64, 256), (200, 16, 31), (1, 1, 1), (70, 300, 128)]
        var worst = 0.0, count = 0
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for (alpha, beta) in [(Float(1), Float(0)), (Float(0.5), Float(1)), (Float(-2), Float(0.25))] {
                    // Stored A: [m, k] or [k, m]; B: [k, n] or [n, k]; each row padded by 3.
                    let lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 3, ldc = n + 5
                    let a = values((ta ? k : m) * lda, seed: UInt64(m * 131 + k))
                    let b = values((tb ? n : k) * ldb, seed: UInt64(n * 17 + k))
                    let c0 = beta == 0 ? [Float](repeating: .nan, count: m * ldc) : values(m * ldc, seed: UInt64(m + n))
                    var ref = c0, got = c0
                    if beta == 0 { ref = [Float](repeating: 0, count: m * ldc) }
                    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, &ref, Int32(ldc))
                    a.withUnsafeBufferPointer { ap in
                        b.withUnsafeBufferPointer { bp in
                            got.withUnsafeMutableBufferPointer { cp in
                                call(ta, tb, m, n, k, alpha, ap.baseAddress!, lda, bp.baseAddress!, ldb, beta, cp.baseAddress!, ldc)
                            }
                        }
                    }
                    var maxRef = 0.0, maxDiff = 0.0
                    for i in 0..<m {
                        for j in 0..<n {
                            maxRef = max(maxRef, Double(abs(ref[i * ldc + j])))
                            maxDiff = max(maxDiff, Double(abs(got[i * ldc + j] - ref[i * ldc + j])))
                        }
                        // The padding of each C row is not touched.
                        for j in n..<ldc {
                            let same = got[i * ldc + j] == c0[i * ldc + j] || (got[i * ldc + j].isNaN && c0[i * ldc + j].isNaN)
                            XCTAssertTrue(same, "\(name): wrote outside C at row \(i), column \(j)")
                        }
                    }
                    let rel = maxRef > 0 ? maxDiff / maxRef : maxDiff
                    XCTAssertFalse(rel.isNaN, "\(name) \(ta ? "T" : "N")\(tb ? "T" : "N") \(m)x\(n)x\(k) beta \(beta): NaN (read C with beta 0?)")
                    XCTAssertLessThanOrEqual(rel, 1e-5, "\(name) \(ta ? "T" : "N")\(tb ? "T" : "N") \(m)x\(n)x\(k) alpha \(alpha) beta \(beta)")
                    worst = max(worst, rel)
                    count += 1
                }
            }
        }
        print("GEMMLibrariesTests: \(name) against OpenBLAS, \(count) products, worst |diff| / max|C| = \(worst)")
    }

    func testOneDNNAgainstOpenBLAS() throws {
        guard let lib = GEMMLibraries.oneDNN else {
            print("GEMMLibrariesTests: SKIPPED: oneDNN (libdnnl.so.2) is not installed: apt-get install libdnnl2")
            throw XCTSkip("oneDNN (libdnnl.so.2) is not installed: apt-get install libdnnl2")
        }
        check("oneDNN") { ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc in
            GEMMLibraries.dnnl(lib, transA: ta, transB: tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                               b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    func testBLISAgainstOpenBLAS() throws {
        guard let lib = GEMMLibraries.blis else {
            print("GEMMLibrariesTests: SKIPPED: BLIS (libblis.so.4) is not installed: apt-get install libblis4-pthread")
            throw XCTSkip("BLIS (libblis.so.4) is not installed: apt-get install libblis4-pthread")
        }
        check("BLIS") { ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc in
            GEMMLibraries.blis(lib, transA: ta, transB: tb, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                               b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    /// The measured rule (MOE_TUNE_GEMM=auto on AVX2 without AVX-512) on the step's products.
    func testMeasuredRule() {
        typealias T = BLAS.Transpose
        let cases: [(T, T, Int, Int, Int, BLAS.Library)] = [
            (.none, .transpose, 1024, 512, 512, .onednn),   // q forward
            (.none, .none, 1024, 512, 512, .openblas),      // q input gradient
            (.none, .none, 1024, 512, 128, .onednn),        // k input gradient
            (.none, .none, 256, 512, 1024, .openblas),      // expert gate input gradient
            (.none, .none, 256, 64, 256, .onednn),          // attention P V
            (.transpose, .none, 256, 64, 256, .onednn),     // attention P^T dO
            (.transpose, .none, 8, 512, 1024, .blis),       // LoRA dA
            (.transpose, .none, 512, 8, 1024, .blis),       // LoRA dB
            (.transpose, .none, 512, 512, 1024, .openblas), // a full weight gradient
            (.transpose, .transpose, 64, 64, 64, .openblas),
        ]
        for (ta, tb, m, n, k, want) in cases {
            XCTAssertEqual(BLAS.measuredRule(ta, tb, m: m, n: n, k: k), want, "\(ta) \(tb) \(m)x\(n)x\(k)")
        }
    }
}
