import Foundation
import MoEFormats
import MoEText

/// The optional GEMM libraries beside OpenBLAS: BLIS and oneDNN, loaded with dlopen at run time
/// when Debian's packages are installed (`libblis4-pthread`, `libdnnl2`), so OpenBLAS stays the
/// only library moe-tune links and needs. `BLAS.sgemm` picks one per product (the rule is in
/// BLAS.swift); this file only finds the libraries and calls them single-threaded, row-major,
/// with BLAS semantics (beta = 0 overwrites C).
package enum GEMMLibraries {
    /// dnnl_sgemm(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc): row-major.
    package typealias DNNLSgemm = @convention(c) (CChar, CChar, Int64, Int64, Int64, Float, UnsafePointer<Float>?, Int64,
                                          UnsafePointer<Float>?, Int64, Float, UnsafeMutablePointer<Float>?, Int64) -> Int32
    /// bli_sgemm(transa, transb, m, n, k, &alpha, a, rs_a, cs_a, b, rs_b, cs_b, &beta, c, rs_c, cs_c),
    /// dim_t and inc_t 64-bit (Debian's amd64 build); transposes are passed as strides.
    package typealias BLISSgemm = @convention(c) (Int32, Int32, Int64, Int64, Int64, UnsafeMutablePointer<Float>?,
                                          UnsafeMutablePointer<Float>?, Int64, Int64, UnsafeMutablePointer<Float>?,
                                          Int64, Int64, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?,
                                          Int64, Int64) -> Void
    package typealias OMPSetNumThreads = @convention(c) (Int32) -> Void

    package struct OneDNN: @unchecked Sendable {
        package let sgemm: DNNLSgemm
        /// libgomp's, loaded by oneDNN: its thread count is a per-thread setting, so every
        /// call sets one thread on the calling worker (moe-tune's workers do the threading).
        package let setThreads: OMPSetNumThreads
    }
    package struct BLIS: @unchecked Sendable {
        package let sgemm: BLISSgemm
    }

    /// RTLD_LOCAL | RTLD_DEEPBIND: BLIS exports cblas_sgemm and sgemm_ as OpenBLAS does; its own
    /// calls must bind to itself, and nothing of it may shadow OpenBLAS.
    private static let flags = RTLD_NOW | RTLD_LOCAL | 0x00008

    package static let oneDNN: OneDNN? = {
        guard let h = dlopen("libdnnl.so.2", flags),
              let f = dlsym(h, "dnnl_sgemm"),
              let g = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD) ?? dlopen("libgomp.so.1", RTLD_NOW),
              let t = dlsym(g, "omp_set_num_threads")
        else { return nil }
        return OneDNN(sgemm: unsafeBitCast(f, to: DNNLSgemm.self), setThreads: unsafeBitCast(t, to: OMPSetNumThreads.self))
    }()

    package static let blis: BLIS? = {
        let paths = ["libblis.so.4", "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4",
                     "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4", "/usr/lib/x86_64-linux-gnu/blis-serial/libblis.so.4"]
        for p in paths {
            guard let h = dlopen(p, flags) else { continue }
            if let f = dlsym(h, "bli_sgemm") { return BLIS(sgemm: unsafeBitCast(f, to: BLISSgemm.self)) }
        }
        return nil
    }()

    /// C[m, n] = alpha op(A) op(B) + beta C on oneDNN, one thread. k > 0.
    @inline(__always)
    package static func dnnl(_ lib: OneDNN, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        lib.setThreads(1)
        // The arguments are valid by construction (the same ones OpenBLAS takes); a status other
        // than success would be a bug in this call, not bad input.
        let status = lib.sgemm(transA ? 84 : 78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                               b, Int64(ldb), beta, c, Int64(ldc))
        precondition(status == 0, "dnnl_sgemm returned status \(status)")
    }

    /// The same on BLIS (bli_sgemm: its small/skinny "sup" path below its thresholds), one thread
    /// (BLIS runs single-threaded unless BLIS_NUM_THREADS is set).
    @inline(__always)
    package static func blis(_ lib: BLIS, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        var alpha = alpha, beta = beta
        // op(A) [m, k] and op(B) [k, n] by row and column strides.
        let rsa = transA ? 1 : lda, csa = transA ? lda : 1
        let rsb = transB ? 1 : ldb, csb = transB ? ldb : 1
        lib.sgemm(0, 0, Int64(m), Int64(n), Int64(k), &alpha, UnsafeMutablePointer(mutating: a), Int64(rsa), Int64(csa),
                  UnsafeMutablePointer(mutating: b), Int64(rsb), Int64(csb), &beta, c, Int64(ldc), 1)
    }
}
