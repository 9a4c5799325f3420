import Foundation

/// SwiGLU activation of the Llama MLP and of each Mixtral expert:
/// out [N, I] = silu(gate) * up,  silu(g) = g / (1 + exp(-g)).
public func swigluForward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>,
                          up: UnsafePointer<Float>, count: Int) {
    parallelChunks(count, minChunk: 4096) { range in
        for i in range {
            let g = gate[i]
            out[i] = g / (1 + Foundation.exp(-g)) * up[i]
        }
    }
}

/// Backward of swigluForward: with s = sigmoid(g),
/// dgate = dout * up * s * (1 + g * (1 - s)),  dup = dout * g * s.
/// All [count]; dgate and dup are overwritten.
public func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dout: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           count: Int) {
    parallelChunks(count, minChunk: 4096) { range in
        for i in range {
            let g = gate[i]
            let s = 1 / (1 + Foundation.exp(-g))
            let d = dout[i]
            dgate[i] = d * up[i] * s * (1 + g * (1 - s))
            dup[i] = d * g * s
        }
    }
}
