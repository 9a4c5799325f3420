import MoEFormats
import MoEText
/// Inverted dropout on an adapter's input, with a counter-based mask: element i of a
/// call keyed by `key` is kept iff hash(key, i) >= p, so the backward pass regenerates
/// the same mask instead of storing it. Kept values are scaled by 1 / (1 - p).
/// dst, src [count].
public func dropoutForward(dst: UnsafeMutablePointer<Float>, src: UnsafePointer<Float>, count: Int,
                           p: Float, key: UInt64) {
    let scale = 1 / (1 - p)
    let threshold = UInt64(Double(p) * 16_777_216)
    parallelChunks(count, minChunk: 8192) { range in
        for i in range {
            let keep = (mixBits(key &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15) >> 40) >= threshold
            dst[i] = keep ? src[i] * scale : 0
        }
    }
}

@inline(__always)
package func mixBits(_ x: UInt64) -> UInt64 {
    var z = x
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
