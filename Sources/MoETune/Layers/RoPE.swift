import Foundation

/// Rotary position embedding in the Hugging Face layout ("rotate_half"): within each
/// head of D dims, dim i pairs with dim i + D/2 and both use frequency
/// inv_freq[i] = theta^(-2i/D).
///   x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin.
public struct RoPETable: Sendable {
    public let headDim: Int
    public let maxPositions: Int
    /// cos/sin [maxPositions, D/2]
    let cos: [Float]
    let sin: [Float]

    public init(headDim: Int, theta: Double, maxPositions: Int) {
        self.headDim = headDim
        self.maxPositions = maxPositions
        let half = headDim / 2
        var c = [Float](repeating: 0, count: maxPositions * half)
        var s = c
        for i in 0..<half {
            // transformers computes inv_freq and position * inv_freq in fp32.
            let invFreq = Float(1.0 / Foundation.pow(theta, Double(2 * i) / Double(headDim)))
            for p in 0..<maxPositions {
                let angle = Double(Float(p) * invFreq)
                c[p * half + i] = Float(Foundation.cos(angle))
                s[p * half + i] = Float(Foundation.sin(angle))
            }
        }
        cos = c
        sin = s
    }

    /// Rotates x [B*T, heads*D] in place; row b*T + t has position t.
    public func forward(_ x: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int) {
        apply(x, batch: b, seq: t, heads: heads, sign: 1)
    }

    /// The backward of a rotation is the rotation by the opposite angle; applied in place to dx.
    public func backward(_ dx: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int) {
        apply(dx, batch: b, seq: t, heads: heads, sign: -1)
    }

    /// Rotates one token's x [heads*D] at `position` in place (incremental decoding).
    public func rotate(_ x: UnsafeMutablePointer<Float>, position: Int, heads: Int) {
        let d = headDim, half = d / 2
        cos.withUnsafeBufferPointer { cp in
            sin.withUnsafeBufferPointer { sp in
                for h in 0..<heads {
                    let v = x + h * d
                    for i in 0..<half {
                        let x1 = v[i], x2 = v[i + half], c = cp[position * half + i], s = sp[position * half + i]
                        v[i] = x1 * c - x2 * s
                        v[i + half] = x2 * c + x1 * s
                    }
                }
            }
        }
    }

    private func apply(_ x: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int, sign: Float) {
        let d = headDim, half = d / 2, width = heads * d
        cos.withUnsafeBufferPointer { cosBuf in
            sin.withUnsafeBufferPointer { sinBuf in
                parallelChunks(b * t, minChunk: 32) { rows in
                    for row in rows {
                        let pos = row % t
                        let cp = cosBuf.baseAddress! + pos * half
                        let sp = sinBuf.baseAddress! + pos * half
                        for h in 0..<heads {
                            let v = x + row * width + h * d
                            for i in 0..<half {
                                let x1 = v[i], x2 = v[i + half]
                                let c = cp[i], s = sign * sp[i]
                                v[i] = x1 * c - x2 * s
                                v[i + half] = x2 * c + x1 * s
                            }
                        }
                    }
                }
            }
        }
    }
}
