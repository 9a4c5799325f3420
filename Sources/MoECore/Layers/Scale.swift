import MoEFormats
import MoEText
/// y [count] *= a.
@inline(__always)
package func scaleInPlace(_ y: UnsafeMutablePointer<Float>, count: Int, by a: Float) {
    for i in 0..<count { y[i] *= a }
}

/// y [count] /= a (Granite's logits_scaling divides, as transformers does).
@inline(__always)
package func divideInPlace(_ y: UnsafeMutablePointer<Float>, count: Int, by a: Float) {
    for i in 0..<count { y[i] /= a }
}

/// y [count] = base + a * y: a sublayer's output y scaled by Granite's residual_multiplier
/// and added to its residual input.
@inline(__always)
package func scaledResidual(_ y: UnsafeMutablePointer<Float>, base: UnsafePointer<Float>, count: Int, scale a: Float) {
    for i in 0..<count { y[i] = base[i] + a * y[i] }
}

/// dst [count] = a * src.
@inline(__always)
package func scaledCopy(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, scale a: Float) {
    for i in 0..<count { dst[i] = a * src[i] }
}
