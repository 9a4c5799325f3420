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

/// A frozen bias (Qwen2's q/k/v): y [N, out] += b [out] on every row. Its backward is the
/// identity on dy (the gradient reaches the input through the weight alone), so there is
/// no bias backward: the bias is frozen and no gradient is computed for it.
@inline(__always)
public func biasForward(y: UnsafeMutablePointer<Float>, rows n: Int, bias b: UnsafePointer<Float>?, cols: Int) {
    guard let b else { return }
    for i in 0..<n {
        let row = y + i * cols
        for j in 0..<cols { row[j] += b[j] }
    }
}
