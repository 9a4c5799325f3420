import Foundation
import MoEFormats
import MoEText

/// Qwen2-MoE's shared expert, added to the routed experts' output:
///   out [N, H] += sigmoid(x w_g^T) [N, 1] * FFN_s(x) [N, H]
/// x [N, H] (the MoE block input); w_g [1, H] frozen; FFN_s a SwiGLU of
/// shared_expert_intermediate_size with its LoRA adapters (target `shared_expert`).
/// Without a gate (DeepSeek-V2's shared experts, w_g nil) the factor is 1.
/// Keeps FFN_s(x) in a.out and the sigmoid in a.gateValue for the backward pass.
package func sharedExpertForward(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int, hidden h: Int,
                         weights w: FeedForwardWeights, gate wg: Matrix?, adapters: FeedForwardAdapters,
                         cache: FeedForwardLoRACache, acts a: SharedExpertActivations, act: UnsafeMutablePointer<Float>,
                         path: ProductPath = .exact) {
    feedForward(out: a.out.pointer, x: x, rows: n, weights: w, adapters: adapters, cache: cache,
                gate: a.gate.pointer, up: a.up.pointer, act: act, accumulate: false, path: path)
    let g = a.gateValue.pointer, s = a.out.pointer
    if let wg { linearForward(y: g, x: x, rows: n, weight: wg, path: path) }   // [N, 1]
    for i in 0..<n {
        g[i] = wg == nil ? 1 : 1 / (1 + Foundation.exp(-g[i]))
        let o = out + i * h, si = s + i * h
        for j in 0..<h { o[j] += g[i] * si[j] }
    }
}

/// Backward of sharedExpertForward. dy [N, H] = d out; dx [N, H] += d x through FFN_s
/// and the gate; adapter gradients accumulate.
///   d s = g * dy;  d z = <dy, s> * g * (1 - g) (z = x w_g^T);  dx += d z w_g.
/// ds [N, H] and dz [N] are scratch; dgate/dup [N, Is] as in feedForwardBackward.
package func sharedExpertBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                          rows n: Int, hidden h: Int, weights w: FeedForwardWeights, gate wg: Matrix?,
                          adapters: FeedForwardAdapters, cache: FeedForwardLoRACache, acts a: SharedExpertActivations,
                          ds: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>,
                          dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>) {
    let g = a.gateValue.pointer, s = a.out.pointer
    for i in 0..<n {
        let dyi = dy + i * h, si = s + i * h, dsi = ds + i * h
        var dot: Float = 0
        for j in 0..<h { dot += dyi[j] * si[j]; dsi[j] = g[i] * dyi[j] }
        dz[i] = dot * g[i] * (1 - g[i])
    }
    feedForwardBackward(dx: dx, dy: ds, x: x, rows: n, weights: w, adapters: adapters, cache: cache,
                        gate: a.gate.pointer, up: a.up.pointer, dgate: dgate, dup: dup, du: du, accumulate: true)
    if let wg { linearBackwardInput(dx: dx, dy: dz, rows: n, weight: wg, accumulate: true) }
}
