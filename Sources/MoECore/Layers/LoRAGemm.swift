import CKernels
import Foundation
import MoEFormats
import MoEText

/// The matrix products of LoRA adapters (loraForward / loraBackward). Each has the rank r
/// as one dimension; when the product runs on one worker anyway (inside a parallel region,
/// such as an MoE expert's task, or below `BLAS.splitThreshold`) it goes to the skinny
/// kernel of Sources/CKernels/lora_gemm.c, which packs only a small block of B instead of
/// both operands as OpenBLAS does (on one 64-expert expert's shapes, 128 rows, 2.5x less
/// time for its six products; scripts/bench_lora_gemm.c). Larger products keep
/// `BLAS.gemm` and its split over the workers.
/// RunOptions.loraKernel (`MOE_TUNE_LORA_KERNEL`): `blas` sends every product to `BLAS.gemm`
/// (to measure the two); `scalar` forces the kernel's scalar loop (mt_set_kernels).
package enum LoRAGemm {
    package static let useKernel: Bool = RunOptions.current.loraKernel != .blas

    /// C[m, n] = alpha * op(A) op(B) + beta * C, row-major; the arguments of `BLAS.gemm`.
    @inline(__always)
    package static func gemm(_ transA: BLAS.Transpose, _ transB: BLAS.Transpose, m: Int, n: Int, k: Int,
                     alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if useKernel && (Parallel.inRegion || m * n * k < BLAS.splitThreshold) {
            mt_lora_gemm(transA == .transpose ? 1 : 0, transB == .transpose ? 1 : 0, m, n, k, alpha,
                         a, lda, b, ldb, beta, c, ldc)
        } else {
            BLAS.gemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
        }
    }
}
