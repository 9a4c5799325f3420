import COpenBLAS
import Foundation
import MoEFormats
import MoEText

/// The one entry point for matrix products in moe-tune. Every GEMM goes through
/// `BLAS.gemm`, so the backend can change in one place.
///
/// OpenBLAS selection: Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not recognise
/// recent AVX-512 CPUs and falls back to its Haswell (AVX2) kernels, about half the
/// speed of its SkylakeX kernels on transformer shapes; some environments also export
/// OPENBLAS_CORETYPE=Haswell. OpenBLAS reads that variable only in its load-time
/// constructor, before main() runs, but it exports its dispatcher
/// (gotoblas_dynamic_quit / gotoblas_dynamic_init). So on first use moe-tune checks the
/// CPU itself and, when it has the AVX-512 subsets the SkylakeX kernels need, re-runs
/// the dispatcher with OPENBLAS_CORETYPE=SkylakeX. On other CPUs it leaves OpenBLAS's
/// choice alone. RunOptions.blasCoreType (MOE_TUNE_BLAS_CORETYPE=NAME) forces a core type (e.g. Haswell, to
/// measure without the switch; one of `forcibleCoreTypes` the CPU runs, EnvironmentSwitches
/// checks it); MOE_TUNE_BLAS_CORETYPE=keep keeps OpenBLAS's choice.
public enum BLAS {
    public enum Transpose { case none, transpose }

    /// What `ensureInitialized` did, for reports and the bench command.
    public struct Selection: Sendable {
        public let coreBefore: String
        public let core: String
        public let switched: Bool
        public let cpuHasAVX512: Bool
    }

    private static let selectionOnce: Selection = selectKernels()

    /// Idempotent; called by every gemm (cheap after the first call).
    @discardableResult
    public static func ensureInitialized() -> Selection { selectionOnce }

    private static func corename() -> String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    private static func selectKernels() -> Selection {
        let before = corename()
        let avx512 = cpuSupportsSkylakeXKernels()
        let request = RunOptions.current.blasCoreType
        let target: String?
        switch request.lowercased() {
        case "keep": target = nil
        case "auto", "": target = avx512 ? "SkylakeX" : nil
        default: target = request
        }
        // Split mode: moe-tune splits each large product over the workers itself and runs
        // independent small ones side by side, so OpenBLAS runs single-threaded in the
        // calling thread. Library mode: OpenBLAS's own threads take each product whole
        // (a measurement knob: on the 2-core AVX2 EPYC the whole step ran 3-4x slower, its
        // threads spinning through every non-BLAS stretch of the step).
        openblas_set_num_threads(Int32(threading == .library ? Parallel.workers : 1))
        // Single-threaded, OpenBLAS never hands its server threads work, but the ones its
        // load-time constructor started poll for it (sched_yield) for about 2^28 cycles
        // first: on 2 cores, a third runnable thread through the first 0.1 s of every
        // command (the demo model's eval: 234 -> 132 ms CPU, 119 -> 92 ms wall). Stopped.
        if threading == .split { moe_blas_stop_threads() }
        var switched = false
        if let target, target.lowercased() != before.lowercased() {
            setenv("OPENBLAS_CORETYPE", target, 1)
            gotoblas_dynamic_quit()
            gotoblas_dynamic_init()
            switched = true
        }
        return Selection(coreBefore: before, core: corename(), switched: switched, cpuHasAVX512: avx512)
    }

    /// AVX-512 F, CD, BW, DQ and VL: what OpenBLAS's SkylakeX kernels execute.
    package static func cpuSupportsSkylakeXKernels() -> Bool {
        #if arch(x86_64)
        return ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(cpuFlags.contains)
        #else
        return false
        #endif
    }

    /// The CPU's flags as /proc/cpuinfo lists them (empty where it cannot be read).
    package static let cpuFlags: Set<String> = {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flagsLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return [] }
        return Set(flagsLine.split(separator: " ").map(String.init))
    }()

    /// The OpenBLAS 0.3.21 core types MOE_TUNE_BLAS_CORETYPE may force (x86-64), with the CPU
    /// flags their kernels execute. OpenBLAS itself checks neither: a core type the CPU cannot run
    /// ends the process with SIGILL (SkylakeX on the AVX2 EPYC, measured), and a name it does not
    /// know, Cooperlake included (its 0.3.21 lookup stops one entry short), falls back silently to
    /// its own choice. The older and AMD-FMA4 core types are not offered.
    package static let forcibleCoreTypes: [(name: String, flags: [String])] = {
        #if arch(x86_64)
        return [("Prescott", ["pni"]), ("Nehalem", ["sse4_2"]), ("Sandybridge", ["avx"]), ("Haswell", ["avx2", "fma"]),
                ("Zen", ["avx2", "fma"]), ("SkylakeX", ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"])]
        #else
        return []
        #endif
    }()

    /// Whether this CPU has every flag a core type's kernels execute.
    package static func cpuRuns(_ core: (name: String, flags: [String])) -> Bool { core.flags.allSatisfy(cpuFlags.contains) }

    /// Work below this many multiply-adds runs on the calling thread only.
    package static let splitThreshold = 1 << 21
    /// Workers of a parallel region (Parallel.workers).
    package static var cores: Int { Parallel.workers }

    /// Who spreads one product over the cores: `split` (default): moe-tune, by rows or
    /// columns of C, OpenBLAS single-threaded in each worker; `library`: OpenBLAS's own
    /// threads (RunOptions.blasThreading, MOE_TUNE_BLAS_THREADING=library), read on first use.
    public enum Threading: String, Sendable { case split, library }
    public static let threading: Threading = RunOptions.current.blasThreading

    /// C[m, n] = alpha * op(A) op(B) + beta * C, row-major, with leading dimensions
    /// (row strides) lda, ldb, ldc. op(A) is [m, k], op(B) is [k, n].
    /// Large products are split over the cores along the longer of m and n; pass
    /// `split: false` from code that already runs in parallel.
    @inline(__always)
    public static func gemm(
        _ transA: Transpose, _ transB: Transpose,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        split: Bool = true
    ) {
        if m == 0 || n == 0 { return }
        _ = selectionOnce
        let parts = split && threading == .split && !Parallel.inRegion && m * n * k >= splitThreshold ? cores : 1
        if parts <= 1 {
            sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        if m >= n {
            // Rows of op(A) and C.
            let per = (m + parts - 1) / parts
            Parallel.run(parts) { p in
                let lo = p * per, rows = min(m, lo + per) - lo
                guard rows > 0 else { return }
                let ap = transA == .none ? a + lo * lda : a + lo
                sgemm(transA, transB, m: rows, n: n, k: k, alpha: alpha, a: ap, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c + lo * ldc, ldc: ldc)
            }
        } else {
            // Columns of op(B) and C.
            let per = (n + parts - 1) / parts
            Parallel.run(parts) { p in
                let lo = p * per, cols = min(n, lo + per) - lo
                guard cols > 0 else { return }
                let bp = transB == .none ? b + lo : b + lo * ldb
                sgemm(transA, transB, m: m, n: cols, k: k, alpha: alpha, a: a, lda: lda, b: bp, ldb: ldb,
                      beta: beta, c: c + lo, ldc: ldc)
            }
        }
    }

    /// One product on the calling thread (OpenBLAS).
    @inline(__always)
    package static func sgemm(
        _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor,
            transA == .none ? CblasNoTrans : CblasTrans,
            transB == .none ? CblasNoTrans : CblasTrans,
            Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
