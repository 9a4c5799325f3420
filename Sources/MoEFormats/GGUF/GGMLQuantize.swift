import Foundation

/// Quantization of fp32 values to the ggml types moe-tune writes (F32, F16, BF16, Q8_0,
/// Q4_0), byte for byte as gguf-py's `gguf.quants.quantize` (which matches ggml's
/// reference quantize_row_*_ref): fp32 arithmetic in the same order, f16 scales rounded
/// to nearest even.
public enum GGMLQuantize {
    /// The types a GGUF can be written in.
    public static let writable: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0]

    /// Encodes `count` values (a multiple of the type's block size) of `x` as `type`.
    public static func run(_ type: GGMLType, _ x: UnsafePointer<Float>, count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: type.bytes(count: count))
        out.withUnsafeMutableBytes { o in
            let p = o.baseAddress!
            switch type {
            case .f32:
                for i in 0..<count { p.storeBytes(of: x[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            case .f16:
                for i in 0..<count { p.storeBytes(of: Float16(x[i]).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            case .bf16:
                for i in 0..<count { p.storeBytes(of: FloatConversion.floatToBF16(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            case .q8_0:
                for b in 0..<count / 32 { q8_0(x + 32 * b, p + 34 * b) }
            case .q4_0:
                for b in 0..<count / 32 { q4_0(x + 32 * b, p + 18 * b) }
            default:
                preconditionFailure("GGMLQuantize: \(type.name) is not a writable type")
            }
        }
        return out
    }

    /// The first of `count` values whose encoding as `type` overflows an f16 to infinity (the
    /// value itself in F16; its block's scale, max |x| / 127 or / 8, in Q8_0 and Q4_0), or nil.
    /// Encoding it would write inf silently (review: `merge --dtype f16` of a large adapter).
    public static func firstOverflow(_ type: GGMLType, _ x: UnsafePointer<Float>, count: Int) -> Int? {
        let divisor: Float
        switch type {
        case .f16: divisor = 1
        case .q8_0: divisor = 127
        case .q4_0: divisor = 8
        default: return nil
        }
        for i in 0..<count where Float16(abs(x[i]) / divisor).isInfinite { return i }
        return nil
    }

    /// d = max |x| / 127, q = round-half-away(x * (1 / d)).
    package static func q8_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d == 0 ? 0 : 1 / d
        out.storeBytes(of: Float16(d).bitPattern.littleEndian, as: UInt16.self)
        for j in 0..<32 {
            let q = (x[j] * id).rounded(.toNearestOrAwayFromZero)
            out.storeBytes(of: Int8(truncatingIfNeeded: Int(q)), toByteOffset: 2 + j, as: Int8.self)
        }
    }

    /// The value of largest magnitude (the first of equals) m, d = m / -8,
    /// q = min(15, trunc(x * (1 / d) + 8.5)); value j in the low nibble of byte j, j + 16 in the high.
    package static func q4_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        var amax = abs(x[0]), m = x[0]
        for j in 1..<32 where abs(x[j]) > amax { amax = abs(x[j]); m = x[j] }
        let d = m / -8
        let id: Float = d == 0 ? 0 : 1 / d
        out.storeBytes(of: Float16(d).bitPattern.littleEndian, as: UInt16.self)
        func code(_ v: Float) -> UInt8 {
            let t = (v * id + 8.5).rounded(.towardZero)
            return UInt8(min(15, max(0, Int(t))))
        }
        for j in 0..<16 {
            out.storeBytes(of: code(x[j]) | (code(x[j + 16]) << 4), toByteOffset: 2 + j, as: UInt8.self)
        }
    }
}
