import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// Optimizers over the flat ParameterStore, matching torch.optim.AdamW and
/// torch.optim.SGD step for step.
public protocol Optimizer: AnyObject {
    /// One update of every parameter with the current gradients at learning rate `lr`.
    func step(lr: Float)
    /// Steps taken (torch's `step` count: AdamW's bias correction, SGD's first step).
    var t: Int { get set }
    /// The state a resumed run needs, by name: AdamW's moments, SGD's momentum buffer.
    var stateBuffers: [String: FloatBuffer] { get }
}

/// AdamW (Loshchilov & Hutter) as torch implements it, step t counting from 1:
///   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
///   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
public final class AdamW: Optimizer {
    package let store: ParameterStore
    package let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    package let m: FloatBuffer, v: FloatBuffer
    public var t = 0
    public var stateBuffers: [String: FloatBuffer] { ["adamw.exp_avg": m, "adamw.exp_avg_sq": v] }

    public init(store: ParameterStore, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.store = store
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        m = FloatBuffer(count: store.count)
        v = FloatBuffer(count: store.count)
    }

    public func step(lr: Float) {
        t += 1
        let bc1 = 1 - Foundation.pow(Double(beta1), Double(t))
        let bc2 = 1 - Foundation.pow(Double(beta2), Double(t))
        let stepSize = Float(Double(lr) / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let decay = 1 - lr * weightDecay
        let p = store.params.pointer, g = store.grads.pointer, m = m.pointer, v = v.pointer
        let (b1, b2, eps) = (beta1, beta2, self.eps)
        parallelChunks(store.count, minChunk: 16384) { range in
            for i in range {
                p[i] *= decay
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                p[i] -= stepSize * m[i] / (v[i].squareRoot() / bc2Sqrt + eps)
            }
        }
    }
}

/// SGD with momentum and optional Nesterov, as torch implements it (dampening 0):
///   g += wd p;  buf = g (first step) or mu buf + g;  g = g + mu buf (Nesterov) or buf;  p -= lr g.
public final class SGD: Optimizer {
    package let store: ParameterStore
    package let momentum: Float, nesterov: Bool, weightDecay: Float
    package let buf: FloatBuffer?
    public var t = 0
    public var stateBuffers: [String: FloatBuffer] { buf.map { ["sgd.momentum_buffer": $0] } ?? [:] }

    public init(store: ParameterStore, momentum: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) {
        self.store = store
        self.momentum = momentum; self.nesterov = nesterov; self.weightDecay = weightDecay
        buf = momentum > 0 ? FloatBuffer(count: store.count) : nil
    }

    public func step(lr: Float) {
        t += 1
        let first = t == 1
        let p = store.params.pointer, g = store.grads.pointer, b = buf?.pointer
        let (mu, wd, nesterov) = (momentum, weightDecay, self.nesterov)
        parallelChunks(store.count, minChunk: 16384) { range in
            for i in range {
                var d = g[i] + wd * p[i]
                if let b {
                    b[i] = first ? d : mu * b[i] + d
                    d = nesterov ? d + mu * b[i] : b[i]
                }
                p[i] -= lr * d
            }
        }
    }
}

/// Global gradient norm and clipping, as torch.nn.utils.clip_grad_norm_: when the norm
/// exceeds maxNorm, every gradient is scaled by maxNorm / (norm + 1e-6).
/// Returns the norm before clipping.
@discardableResult
public func clipGradientNorm(_ store: ParameterStore, maxNorm: Float?) -> Double {
    let g = store.grads.pointer
    var ss = 0.0
    for i in 0..<store.count { ss += Double(g[i]) * Double(g[i]) }
    let norm = ss.squareRoot()
    if let maxNorm, norm > Double(maxNorm) {
        let k = Float(Double(maxNorm) / (norm + 1e-6))
        for i in 0..<store.count { g[i] *= k }
    }
    return norm
}

/// What the divergence guard watches besides NaN and inf: an update so large that the
/// adapter's weights leave any sane range (lr 1e30 without grad_clip gave B ~ 3.9e30, the
/// loss stuck at exactly ln V and a gradient norm of 0, and the run exited 0), and a run whose
/// gradient is exactly zero step after step while it has tokens to learn from.
package enum DivergenceGuard {
    /// The largest |weight| an adapter may reach (LoRA weights are far below 1 in practice).
    package static let maxWeight: Float = 1e4
    /// Consecutive steps with counted tokens and a gradient norm of exactly 0 that stop a run.
    package static let zeroGradientSteps = 5

    /// The index and value of the first weight above `maxWeight` in magnitude (or not finite), if any.
    package static func firstExcessive(_ store: ParameterStore) -> (index: Int, value: Float)? {
        let p = store.params.pointer
        for i in 0..<store.count where !(abs(p[i]) <= maxWeight) { return (i, p[i]) }
        return nil
    }
}
