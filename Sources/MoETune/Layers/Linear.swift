/// A linear layer without bias, weight stored [out, in] as in Hugging Face checkpoints.
/// y [N, out] = x [N, in] W^T  (beta = 1 accumulates into y).
@inline(__always)
public func linearForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                          weight w: Matrix, accumulate: Bool = false) {
    if let q = w.nf4 { NF4Matmul.forward(y: y, x: x, rows: n, weight: q, accumulate: accumulate); return }
    BLAS.gemm(.none, .transpose, m: n, n: w.rows, k: w.cols,
              a: x, lda: w.cols, b: w.pointer, ldb: w.cols,
              beta: accumulate ? 1 : 0, c: y, ldc: w.rows)
}

/// Backward of linearForward through a frozen weight: dx [N, in] (+)= dy [N, out] W.
/// No gradient is computed for W.
@inline(__always)
public func linearBackwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int,
                                weight w: Matrix, accumulate: Bool) {
    if let q = w.nf4 { NF4Matmul.backwardInput(dx: dx, dy: dy, rows: n, weight: q, accumulate: accumulate); return }
    BLAS.gemm(.none, .none, m: n, n: w.cols, k: w.rows,
              a: dy, lda: w.rows, b: w.pointer, ldb: w.cols,
              beta: accumulate ? 1 : 0, c: dx, ldc: w.cols)
}
