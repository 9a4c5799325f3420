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
