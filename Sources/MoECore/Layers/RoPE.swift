import Foundation
import MoEFormats
import MoEText

/// Rotary position embedding in the Hugging Face layout ("rotate_half"): within each
/// head of D dims, dim i pairs with dim i + D/2 and both use frequency
/// inv_freq[i] = theta^(-2i/D).
///   x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin.
public struct RoPETable: Sendable {
    public let headDim: Int
    public let maxPositions: Int
    /// cos/sin [maxPositions, D/2]
    package let cos: [Float]
    package let sin: [Float]

    /// With `scaling`, the inverse frequencies are those of transformers'
    /// modeling_rope_utils for the rope type, and cos/sin are multiplied by its attention
    /// factor (YaRN), as transformers' rotary embedding does.
    public init(headDim: Int, theta: Double, maxPositions: Int, scaling: RoPEScaling? = nil) {
        self.headDim = headDim
        self.maxPositions = maxPositions
        let half = headDim / 2
        var c = [Float](repeating: 0, count: maxPositions * half)
        var s = c
        let (inv, factor) = RoPEScaling.inverseFrequencies(headDim: headDim, theta: theta, scaling: scaling)
        for i in 0..<half {
            // transformers computes inv_freq and position * inv_freq in fp32.
            let invFreq = inv[i]
            for p in 0..<maxPositions {
                let angle = Double(Float(p) * invFreq)
                c[p * half + i] = Float(Foundation.cos(angle)) * factor
                s[p * half + i] = Float(Foundation.sin(angle)) * factor
            }
        }
        cos = c
        sin = s
    }

    /// Rotates x [B*T, heads*D] in place; row b*T + t has position t, or positions[b*T + t]
    /// when given (packed rows: each example starts again at 0).
    public func forward(_ x: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int,
                        positions: UnsafePointer<Int32>? = nil) {
        apply(x, batch: b, seq: t, heads: heads, sign: 1, positions: positions)
    }

    /// The backward of a rotation is the rotation by the opposite angle; applied in place to dx.
    public func backward(_ dx: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int,
                         positions: UnsafePointer<Int32>? = nil) {
        apply(dx, batch: b, seq: t, heads: heads, sign: -1, positions: positions)
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

    private func apply(_ x: UnsafeMutablePointer<Float>, batch b: Int, seq t: Int, heads: Int, sign: Float,
                       positions: UnsafePointer<Int32>?) {
        let d = headDim, half = d / 2, width = heads * d
        cos.withUnsafeBufferPointer { cosBuf in
            sin.withUnsafeBufferPointer { sinBuf in
                parallelChunks(b * t, minChunk: 32) { rows in
                    for row in rows {
                        let pos = positions.map { Int($0[row]) } ?? row % t
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

/// RoPE frequency scaling of Hugging Face configs (`rope_scaling`, or `rope_parameters` in
/// transformers 5), computed as transformers' modeling_rope_utils.py does.
public enum RoPEScaling: Equatable, Sendable {
    /// inv_freq / factor.
    case linear(factor: Double)
    /// Llama 3.1: low frequencies divided by factor, high ones kept, a smooth ramp between.
    case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositions: Double)
    /// YaRN: a linear ramp between interpolated and extrapolated frequencies over the
    /// correction range of beta_fast..beta_slow rotations; cos and sin times attentionFactor.
    case yarn(factor: Double, originalMaxPositions: Double, betaFast: Double, betaSlow: Double,
              attentionFactor: Double, truncate: Bool)
    /// inv_freq[i] / factors[i]: llama.cpp's `rope_freqs.weight` (how a GGUF file carries
    /// Llama 3.1's scaling, the divisors convert_hf_to_gguf computed from rope_scaling).
    case frequencyFactors([Double])

    package static let supportedTypes = ["default", "linear", "llama3", "yarn"]

    /// The rope_theta and scaling of a config.json: `rope_scaling` (older files, with
    /// rope_theta at the top level) wins over `rope_parameters` (transformers 5), as in
    /// transformers. Types other than default/linear/llama3/yarn are refused, naming them.
    package static func read(_ json: [String: Any], reader r: FieldReader, path: String, maxPositions: Int) throws -> (Double?, RoPEScaling?) {
        var theta = try r.optionalDouble("rope_theta")
        var key = "rope_parameters"
        var dict: [String: Any]?
        if let s = json["rope_scaling"], !(s is NSNull) {
            guard let d = s as? [String: Any] else {
                throw MoETuneError.config(path: path, key: "rope_scaling", message: "expected an object, got \(s)")
            }
            dict = d
            key = "rope_scaling"
        } else if let p = json["rope_parameters"], !(p is NSNull) {
            guard let d = p as? [String: Any] else {
                throw MoETuneError.config(path: path, key: "rope_parameters", message: "expected an object, got \(p)")
            }
            dict = d
        }
        guard let d = dict else { return (theta, nil) }
        let sub = FieldReader(json: d, path: path, prefix: key + ".")
        if let t = try sub.optionalDouble("rope_theta") { theta = t }
        if let prf = try sub.optionalDouble("partial_rotary_factor"), prf != 1 {
            throw MoETuneError.config(path: path, key: key + ".partial_rotary_factor", message: "partial rotary embeddings are not supported (got \(prf))")
        }
        let kind = try sub.optionalString("rope_type") ?? sub.optionalString("type") ?? "default"
        func required(_ k: String) throws -> Double {
            guard let v = try sub.optionalDouble(k) else {
                throw MoETuneError.config(path: path, key: key + "." + k, message: "required for rope_type '\(kind)'")
            }
            return v
        }
        let original = try sub.optionalDouble("original_max_position_embeddings") ?? Double(maxPositions)
        switch kind {
        case "default":
            return (theta, nil)
        case "linear":
            return (theta, .linear(factor: try required("factor")))
        case "llama3":
            let lo = try required("low_freq_factor"), hi = try required("high_freq_factor")
            guard hi > lo else {
                throw MoETuneError.config(path: path, key: key + ".high_freq_factor", message: "must be greater than low_freq_factor")
            }
            return (theta, .llama3(factor: try required("factor"), lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositions: original))
        case "yarn":
            let factor = try sub.optionalDouble("factor") ?? Double(maxPositions) / original
            func mscale(_ scale: Double, _ m: Double = 1) -> Double { scale <= 1 ? 1 : 0.1 * m * Foundation.log(scale) + 1 }
            var attention = try sub.optionalDouble("attention_factor")
            if attention == nil {
                if let m = try sub.optionalDouble("mscale"), let mAll = try sub.optionalDouble("mscale_all_dim"), m != 0, mAll != 0 {
                    attention = mscale(factor, m) / mscale(factor, mAll)
                } else {
                    attention = mscale(factor)
                }
            }
            let fast = try sub.optionalDouble("beta_fast") ?? 0, slow = try sub.optionalDouble("beta_slow") ?? 0
            return (theta, .yarn(factor: factor, originalMaxPositions: original, betaFast: fast == 0 ? 32 : fast,
                                 betaSlow: slow == 0 ? 1 : slow, attentionFactor: attention!,
                                 truncate: try sub.optionalBool("truncate") ?? true))
        default:
            throw MoETuneError.config(path: path, key: key + ".rope_type",
                message: "RoPE scaling '\(kind)' is not supported (supported: \(supportedTypes.joined(separator: ", ")))")
        }
    }

    /// inv_freq [D/2] and the attention factor that multiplies cos and sin.
    package static func inverseFrequencies(headDim d: Int, theta: Double, scaling: RoPEScaling?) -> ([Float], Float) {
        let half = d / 2
        let base = (0..<half).map { i in 1.0 / Foundation.pow(theta, Double(2 * i) / Double(d)) }
        switch scaling {
        case nil:
            return (base.map { Float($0) }, 1)
        case .linear(let factor):
            return (base.map { Float($0 / factor) }, 1)
        case .frequencyFactors(let factors):
            return (zip(base, factors).map { Float($0 / $1) }, 1)
        case let .llama3(factor, lowFF, highFF, original):
            let lowWave = original / lowFF, highWave = original / highFF
            let inv = base.map { f -> Float in
                let wave = 2 * Double.pi / f
                if wave < highWave { return Float(f) }
                if wave > lowWave { return Float(f / factor) }
                let smooth = (original / wave - lowFF) / (highFF - lowFF)
                return Float((1 - smooth) * f / factor + smooth * f)
            }
            return (inv, 1)
        case let .yarn(factor, original, fast, slow, attention, truncate):
            func correctionDim(_ rotations: Double) -> Double {
                Double(d) * Foundation.log(original / (rotations * 2 * Double.pi)) / (2 * Foundation.log(theta))
            }
            var low = correctionDim(fast), high = correctionDim(slow)
            if truncate { low = low.rounded(.down); high = high.rounded(.up) }
            low = max(low, 0); high = min(high, Double(d - 1))
            if low == high { high += 0.001 }
            let inv = (0..<half).map { i -> Float in
                let ramp = min(max((Double(i) - low) / (high - low), 0), 1)
                let extrapolation = 1 - ramp
                let f = base[i]
                return Float(f / factor * (1 - extrapolation) + f * extrapolation)
            }
            return (inv, Float(attention))
        }
    }
}
