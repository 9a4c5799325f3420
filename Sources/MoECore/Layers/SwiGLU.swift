import CKernels
import Foundation
import MoEFormats
import MoEText

/// SwiGLU activation of the Llama MLP and of each Mixtral expert:
/// out [N, I] = silu(gate) * up,  silu(g) = g / (1 + exp(-g)).
public func swigluForward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>,
                          up: UnsafePointer<Float>, count: Int) {
    parallelChunks(count, minChunk: 4096) { range in
        let lo = range.lowerBound
        mt_swiglu_forward(out + lo, gate + lo, up + lo, range.count)
    }
}

/// Backward of swigluForward: with s = sigmoid(g),
/// dgate = dout * up * s * (1 + g * (1 - s)),  dup = dout * g * s.
/// All [count]; dgate and dup are overwritten.
public func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dout: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           count: Int) {
    parallelChunks(count, minChunk: 4096) { range in
        let lo = range.lowerBound
        mt_swiglu_backward(dgate + lo, dup + lo, dout + lo, gate + lo, up + lo, range.count)
    }
}
