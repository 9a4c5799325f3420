import MoEFormats
import MoEText
/// A linear layer without bias, weight stored [out, in] as in Hugging Face checkpoints.
/// y [N, out] = x [N, in] W^T  (beta = 1 accumulates into y). `path: .fast` (the decoder)
/// reads a compressed weight in its own blocks when there are few rows (FastProducts).
@inline(__always)
public func linearForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                          weight w: Matrix, accumulate: Bool = false, path: ProductPath = .exact) {
    if path == .fast, FastProducts.forward(y: y, x: x, rows: n, weight: w, accumulate: accumulate) { return }
    switch w.storage {
    case .nf4(let q): ChunkedMatmul.forward(y: y, x: x, rows: n, weight: q, accumulate: accumulate); return
    case .ggml(let g): ChunkedMatmul.forward(y: y, x: x, rows: n, weight: g, accumulate: accumulate); return
    case .bf16(let b): ChunkedMatmul.forward(y: y, x: x, rows: n, weight: b, accumulate: accumulate); return
    case .transposed(let t): t.forward(y: y, x: x, rows: n, accumulate: accumulate); return
    case .fp32: break
    }
    BLAS.gemm(.none, .transpose, m: n, n: w.rows, k: w.cols,
              a: x, lda: w.cols, b: w.pointer, ldb: w.cols,
              beta: accumulate ? 1 : 0, c: y, ldc: w.rows)
}

/// Backward of linearForward through a frozen weight: dx [N, in] (+)= dy [N, out] W.
/// No gradient is computed for W.
@inline(__always)
public func linearBackwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, rows n: Int,
                                weight w: Matrix, accumulate: Bool) {
    switch w.storage {
    case .nf4(let q): ChunkedMatmul.backwardInput(dx: dx, dy: dy, rows: n, weight: q, accumulate: accumulate); return
    case .ggml(let g): ChunkedMatmul.backwardInput(dx: dx, dy: dy, rows: n, weight: g, accumulate: accumulate); return
    case .bf16(let b): ChunkedMatmul.backwardInput(dx: dx, dy: dy, rows: n, weight: b, accumulate: accumulate); return
    case .transposed(let t): t.backwardInput(dx: dx, dy: dy, rows: n, accumulate: accumulate); return
    case .fp32: break
    }
    BLAS.gemm(.none, .none, m: n, n: w.cols, k: w.rows,
              a: dy, lda: w.rows, b: w.pointer, ldb: w.cols,
              beta: accumulate ? 1 : 0, c: dx, ldc: w.cols)
}

/// OLMoE's clip_qkv: x [count] clamped to [-c, c] in place.
@inline(__always)
public func clampForward(_ x: UnsafeMutablePointer<Float>, count: Int, limit c: Float) {
    for i in 0..<count { x[i] = min(max(x[i], -c), c) }
}

/// Backward of clampForward: dx = dy where -c <= x <= c, else 0 (as torch.clamp).
/// `x` holds the values before the clamp (or the clamped ones: |x| < c is the same test
/// up to values exactly at the limit).
@inline(__always)
public func clampBackward(_ dy: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, count: Int, limit c: Float) {
    for i in 0..<count where abs(x[i]) > c { dy[i] = 0 }
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
