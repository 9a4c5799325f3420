/// A LoRA adapter on a frozen linear layer W [out, in]:
///   y = x W^T + s * (x A^T) B^T,   A [r, in], B [out, r], s = alpha / r (or alpha / sqrt(r)).
/// A, B and their gradients are slices of the flat parameter and gradient buffers of a
/// ParameterStore (llm.c style), so zeroing, the optimizer and saving are one loop each.
public struct LoRAAdapter: @unchecked Sendable {
    /// PEFT module path, e.g. "model.layers.0.self_attn.q_proj".
    public let module: String
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public let scale: Float
    public let a: UnsafeMutablePointer<Float>    // [r, in]
    public let b: UnsafeMutablePointer<Float>    // [out, r]
    public let gradA: UnsafeMutablePointer<Float>
    public let gradB: UnsafeMutablePointer<Float>
}

/// Forward of the adapter's update, added to y [N, out] (which already holds x W^T):
///   u [N, r] = x A^T (kept for backward);  y += s u B^T.
@inline(__always)
public func loraForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                        adapter l: LoRAAdapter, u: UnsafeMutablePointer<Float>) {
    BLAS.gemm(.none, .transpose, m: n, n: l.rank, k: l.inFeatures,
              a: x, lda: l.inFeatures, b: l.a, ldb: l.inFeatures, c: u, ldc: l.rank)
    BLAS.gemm(.none, .transpose, m: n, n: l.outFeatures, k: l.rank, alpha: l.scale,
              a: u, lda: l.rank, b: l.b, ldb: l.rank, beta: 1, c: y, ldc: l.outFeatures)
}

/// Backward of loraForward: accumulates the adapter's gradients and adds its share of dx.
///   dB += s dy^T u;  du = s dy B;  dA += du^T x;  dx += du A.
/// dy [N, out], x [N, in], u [N, r] from forward; du is scratch [N, r]; dx [N, in].
@inline(__always)
public func loraBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                         rows n: Int, adapter l: LoRAAdapter, u: UnsafePointer<Float>,
                         du: UnsafeMutablePointer<Float>) {
    BLAS.gemm(.transpose, .none, m: l.outFeatures, n: l.rank, k: n, alpha: l.scale,
              a: dy, lda: l.outFeatures, b: u, ldb: l.rank, beta: 1, c: l.gradB, ldc: l.rank)
    BLAS.gemm(.none, .none, m: n, n: l.rank, k: l.outFeatures, alpha: l.scale,
              a: dy, lda: l.outFeatures, b: l.b, ldb: l.rank, c: du, ldc: l.rank)
    BLAS.gemm(.transpose, .none, m: l.rank, n: l.inFeatures, k: n,
              a: du, lda: l.rank, b: x, ldb: l.inFeatures, beta: 1, c: l.gradA, ldc: l.inFeatures)
    BLAS.gemm(.none, .none, m: n, n: l.inFeatures, k: l.rank,
              a: du, lda: l.rank, b: l.a, ldb: l.inFeatures, beta: 1, c: dx, ldc: l.inFeatures)
}
