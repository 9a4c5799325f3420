import MoEFormats
import MoEText
/// A LoRA adapter on a frozen linear layer W [out, in]:
///   y = x W^T + s * (dropout(x) A^T) B^T,   A [r, in], B [out, r], s = alpha / r (or alpha / sqrt(r)).
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
    /// Position in its AdapterSet; keys the dropout mask.
    public let index: Int
    /// Shared dropout settings of the set (nil: no dropout).
    public let dropout: LoRADropout?
}

/// Dropout on adapter inputs while training. The mask of a call is a counter-based hash
/// of (seed, step, adapter, rows), regenerated in backward, so nothing is stored.
public final class LoRADropout: @unchecked Sendable {
    public let p: Float
    package let seed: UInt64
    /// Set by the trainer: true for training steps, false for evaluation.
    public var active = false
    /// Counts micro-batches, so each draws new masks.
    public var step = 0
    /// Per-worker scratch (`Parallel.workerIndex`), `perWorker` floats each: MoE experts
    /// run as parallel tasks, each with its own slice.
    private var dropped: FloatBuffer   // [workers, rows x in] the dropped input
    private var grad: FloatBuffer      // [workers, rows x in] scratch for the input gradient
    private var perWorker: Int

    package init(p: Float, seed: UInt64, scratchCount: Int) {
        self.p = p
        self.seed = seed
        perWorker = scratchCount
        dropped = FloatBuffer(count: scratchCount * Parallel.workers)
        grad = FloatBuffer(count: scratchCount * Parallel.workers)
    }

    /// Each adapter runs once per micro-batch, so (step, adapter) keys a mask.
    package func key(_ l: LoRAAdapter) -> UInt64 {
        mixBits(seed ^ (UInt64(step) &* 0x1000_0001) ^ (UInt64(l.index) &* 0x9E37_79B9))
    }

    /// This worker's dropped-input and input-gradient scratch.
    @inline(__always)
    package var scratch: (dropped: UnsafeMutablePointer<Float>, grad: UnsafeMutablePointer<Float>) {
        let offset = Parallel.workerIndex * perWorker
        return (dropped.pointer + offset, grad.pointer + offset)
    }

    /// Makes room for inputs of `count` floats (rows x in) per worker before training starts.
    public func reserve(_ count: Int) {
        if perWorker < count {
            perWorker = count
            dropped = FloatBuffer(count: count * Parallel.workers)
            grad = FloatBuffer(count: count * Parallel.workers)
        }
    }
}

/// Forward of the adapter's update, added to y [N, out] (which already holds x W^T):
///   u [N, r] = dropout(x) A^T (kept for backward);  y += s u B^T.
@inline(__always)
public func loraForward(y: UnsafeMutablePointer<Float>, x xIn: UnsafePointer<Float>, rows n: Int,
                        adapter l: LoRAAdapter, u: UnsafeMutablePointer<Float>) {
    var x = xIn
    if let d = l.dropout, d.active {
        let dropped = d.scratch.dropped
        dropoutForward(dst: dropped, src: xIn, count: n * l.inFeatures, p: d.p, key: d.key(l))
        x = UnsafePointer(dropped)
    }
    LoRAGemm.gemm(.none, .transpose, m: n, n: l.rank, k: l.inFeatures,
              a: x, lda: l.inFeatures, b: l.a, ldb: l.inFeatures, c: u, ldc: l.rank)
    LoRAGemm.gemm(.none, .transpose, m: n, n: l.outFeatures, k: l.rank, alpha: l.scale,
              a: u, lda: l.rank, b: l.b, ldb: l.rank, beta: 1, c: y, ldc: l.outFeatures)
}

/// Backward of loraForward: accumulates the adapter's gradients and adds its share of dx.
///   dB += s dy^T u;  du = s dy B;  dA += du^T dropout(x);  dx += dropout'(du A).
/// dy [N, out], x [N, in], u [N, r] from forward; du is scratch [N, r]; dx [N, in].
@inline(__always)
public func loraBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x xIn: UnsafePointer<Float>,
                         rows n: Int, adapter l: LoRAAdapter, u: UnsafePointer<Float>,
                         du: UnsafeMutablePointer<Float>) {
    LoRAGemm.gemm(.transpose, .none, m: l.outFeatures, n: l.rank, k: n, alpha: l.scale,
              a: dy, lda: l.outFeatures, b: u, ldb: l.rank, beta: 1, c: l.gradB, ldc: l.rank)
    LoRAGemm.gemm(.none, .none, m: n, n: l.rank, k: l.outFeatures, alpha: l.scale,
              a: dy, lda: l.outFeatures, b: l.b, ldb: l.rank, c: du, ldc: l.rank)
    guard let d = l.dropout, d.active else {
        LoRAGemm.gemm(.transpose, .none, m: l.rank, n: l.inFeatures, k: n,
                  a: du, lda: l.rank, b: xIn, ldb: l.inFeatures, beta: 1, c: l.gradA, ldc: l.inFeatures)
        LoRAGemm.gemm(.none, .none, m: n, n: l.inFeatures, k: l.rank,
                  a: du, lda: l.rank, b: l.a, ldb: l.inFeatures, beta: 1, c: dx, ldc: l.inFeatures)
        return
    }
    let count = n * l.inFeatures, key = d.key(l)
    let (dropped, grad) = d.scratch
    dropoutForward(dst: dropped, src: xIn, count: count, p: d.p, key: key)
    LoRAGemm.gemm(.transpose, .none, m: l.rank, n: l.inFeatures, k: n,
              a: du, lda: l.rank, b: dropped, ldb: l.inFeatures, beta: 1, c: l.gradA, ldc: l.inFeatures)
    LoRAGemm.gemm(.none, .none, m: n, n: l.inFeatures, k: l.rank,
              a: du, lda: l.rank, b: l.a, ldb: l.inFeatures, c: grad, ldc: l.inFeatures)
    // The same mask and scale apply to the gradient of the input.
    dropoutForward(dst: grad, src: grad, count: count, p: d.p, key: key)
    for i in 0..<count { dx[i] += grad[i] }
}
