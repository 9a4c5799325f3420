import Foundation
import MoEFormats
import MoEText

/// GPT-OSS's expert activation (transformers' GptOssExperts._apply_gate) on the fused,
/// interleaved gate_up projection: gate = gate_up[:, 0::2], up = gate_up[:, 1::2],
///   g = min(gate, limit),  u = clamp(up, -limit, limit),
///   out = (u + 1) * g * sigmoid(alpha * g)      (alpha 1.702, limit 7.0 in the config).
public struct ClampedSwiGLU: Sendable, Equatable {
    public var alpha: Float = 1.702
    public var limit: Float = 7

    public init(alpha: Float = 1.702, limit: Float = 7) {
        self.alpha = alpha
        self.limit = limit
    }

    /// gateUp [N, 2I] (interleaved) → out [N, I].
    public func forward(out: UnsafeMutablePointer<Float>, gateUp: UnsafePointer<Float>, rows n: Int, inter: Int) {
        let (alpha, limit) = (self.alpha, self.limit)
        parallelChunks(n * inter, minChunk: 4096) { range in
            for idx in range {
                let g = min(gateUp[2 * idx], limit)
                let u = min(max(gateUp[2 * idx + 1], -limit), limit)
                out[idx] = (u + 1) * g / (1 + Foundation.exp(-alpha * g))
            }
        }
    }

    /// The same on gate and up held apart (gate [N*I], up [N*I], as the experts compute them).
    public func forward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        let (alpha, limit) = (self.alpha, self.limit)
        parallelChunks(count, minChunk: 4096) { range in
            for idx in range {
                let g = min(gate[idx], limit), u = min(max(up[idx], -limit), limit)
                out[idx] = (u + 1) * g / (1 + Foundation.exp(-alpha * g))
            }
        }
    }

    /// Backward of forward: dout [N, I], gateUp [N, 2I] from the forward pass →
    /// dGateUp [N, 2I] (overwritten). With g, u as there and s = sigmoid(alpha g):
    ///   dgate = dout (u + 1) (s + alpha g s (1 - s))   where gate <= limit, else 0;
    ///   dup   = dout g s                               where -limit <= up <= limit, else 0
    /// (torch's clamp passes the gradient at the bounds themselves).
    public func backward(dGateUp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, gateUp: UnsafePointer<Float>,
                         rows n: Int, inter: Int) {
        let (alpha, limit) = (self.alpha, self.limit)
        parallelChunks(n * inter, minChunk: 4096) { range in
            for idx in range {
                let gate = gateUp[2 * idx], up = gateUp[2 * idx + 1]
                let g = min(gate, limit), u = min(max(up, -limit), limit)
                let s = 1 / (1 + Foundation.exp(-alpha * g))
                let d = dout[idx]
                dGateUp[2 * idx] = gate <= limit ? d * (u + 1) * (s + alpha * g * s * (1 - s)) : 0
                dGateUp[2 * idx + 1] = (up >= -limit && up <= limit) ? d * g * s : 0
            }
        }
    }

    /// backward on gate and up held apart, as the experts' backward calls it: gate, up [count]
    /// from the forward pass (after their biases), dout [count] = d act → dgate, dup [count]
    /// (overwritten; dout may be dgate itself: each element is read before it is written).
    /// The same formulas as the interleaved backward above.
    public func backward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                         gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        let (alpha, limit) = (self.alpha, self.limit)
        parallelChunks(count, minChunk: 4096) { range in
            for idx in range {
                let gt = gate[idx], ut = up[idx]
                let g = min(gt, limit), u = min(max(ut, -limit), limit)
                let s = 1 / (1 + Foundation.exp(-alpha * g))
                let d = dout[idx]
                dgate[idx] = gt <= limit ? d * (u + 1) * (s + alpha * g * s * (1 - s)) : 0
                dup[idx] = (ut >= -limit && ut <= limit) ? d * g * s : 0
            }
        }
    }
}
