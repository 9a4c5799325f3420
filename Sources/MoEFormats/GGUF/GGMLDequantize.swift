import Foundation

/// Dequantization of ggml blocks to fp32, operation for operation as ggml's
/// dequantize_row_* (ggml-quants.c) and gguf-py's quants.py compute it, so the values are
/// bit-identical: each product and sum rounded to fp32 in the same order, no fused
/// multiply-add.
public enum GGMLDequantize {
    /// Converts `count` values (a multiple of the type's block size) at `src` into `dst`.
    public static func run(_ type: GGMLType, _ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        let nb = count / type.blockSize, ts = type.typeSize
        switch type {
        case .f32:
            for i in 0..<count { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { dst[i] = half(src, 2 * i) }
        case .bf16:
            for i in 0..<count { dst[i] = FloatConversion.bf16ToFloat(u16(src, 2 * i)) }
        case .q4_0:
            for b in 0..<nb { q4_0(src + b * ts, dst + b * 32) }
        case .q4_1:
            for b in 0..<nb { q4_1(src + b * ts, dst + b * 32) }
        case .q5_0:
            for b in 0..<nb { q5_0(src + b * ts, dst + b * 32) }
        case .q5_1:
            for b in 0..<nb { q5_1(src + b * ts, dst + b * 32) }
        case .q8_0:
            for b in 0..<nb { q8_0(src + b * ts, dst + b * 32) }
        case .q4_K:
            for b in 0..<nb { q4_K(src + b * ts, dst + b * 256) }
        case .q5_K:
            for b in 0..<nb { q5_K(src + b * ts, dst + b * 256) }
        case .q6_K:
            for b in 0..<nb { q6_K(src + b * ts, dst + b * 256) }
        }
    }

    @inline(__always) package static func u16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 { UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inline(__always) package static func half(_ p: UnsafeRawPointer, _ o: Int) -> Float { Float(Float16(bitPattern: u16(p, o))) }
    @inline(__always) package static func byte(_ p: UnsafeRawPointer, _ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }

    /// d (f16), 16 bytes: value j (< 16) in the low nibble of byte j, value j + 16 in its
    /// high nibble; x = (q - 8) * d.
    @inline(__always) package static func q4_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        for j in 0..<16 {
            let q = byte(b, 2 + j)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    /// d, m (f16), 16 bytes; x = q * d + m.
    @inline(__always) package static func q4_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0), m = half(b, 2)
        for j in 0..<16 {
            let q = byte(b, 4 + j)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    /// d (f16), qh (u32: bit j is the fifth bit of value j), 16 bytes; x = (q - 16) * d.
    @inline(__always) package static func q5_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(b, 6 + j)
            let h0 = ((qh >> UInt32(j)) << 4) & 0x10, h1 = (qh >> UInt32(j + 12)) & 0x10
            y[j] = Float(Int(UInt32(q & 0x0F) | h0) - 16) * d
            y[j + 16] = Float(Int(UInt32(q >> 4) | h1) - 16) * d
        }
    }

    /// d, m (f16), qh (u32), 16 bytes; x = q * d + m.
    @inline(__always) package static func q5_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0), m = half(b, 2)
        let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(b, 8 + j)
            let h0 = ((qh >> UInt32(j)) << 4) & 0x10, h1 = (qh >> UInt32(j + 12)) & 0x10
            y[j] = Float(UInt32(q & 0x0F) | h0) * d + m
            y[j + 16] = Float(UInt32(q >> 4) | h1) * d + m
        }
    }

    /// d (f16), 32 int8; x = q * d.
    @inline(__always) package static func q8_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        for j in 0..<32 { y[j] = Float(Int8(bitPattern: byte(b, 2 + j))) * d }
    }

    /// The 6-bit scale and min of sub-block j (0..<8) from the 12 packed bytes (ggml's get_scale_min_k4).
    @inline(__always) package static func scaleMin(_ j: Int, _ s: UnsafeRawPointer) -> (Float, Float) {
        if j < 4 { return (Float(byte(s, j) & 63), Float(byte(s, j + 4) & 63)) }
        let sc = (byte(s, j + 4) & 0x0F) | ((byte(s, j - 4) >> 6) << 4)
        let m = (byte(s, j + 4) >> 4) | ((byte(s, j) >> 6) << 4)
        return (Float(sc), Float(m))
    }

    /// Super-block of 256: d, dmin (f16), 12 bytes of scales/mins, 128 bytes; sub-block of
    /// 32 i: x = (d * sc_i) * q - (dmin * m_i); byte l of each 32-byte group holds value l
    /// of sub-block 2g (low nibble) and of 2g + 1 (high nibble).
    @inline(__always) package static func q4_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0), dmin = half(b, 2)
        let scales = b + 4, qs = b + 16
        for g in 0..<4 {
            let (sc1, m1) = scaleMin(2 * g, scales), (sc2, m2) = scaleMin(2 * g + 1, scales)
            let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
            for l in 0..<32 {
                let q = byte(qs, 32 * g + l)
                y[64 * g + l] = d1 * Float(q & 0x0F) - mm1
                y[64 * g + 32 + l] = d2 * Float(q >> 4) - mm2
            }
        }
    }

    /// As q4_K with a fifth bit per value from qh[32] (bit 2g of byte l for sub-block 2g,
    /// bit 2g + 1 for 2g + 1).
    @inline(__always) package static func q5_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0), dmin = half(b, 2)
        let scales = b + 4, qh = b + 16, qs = b + 48
        for g in 0..<4 {
            let (sc1, m1) = scaleMin(2 * g, scales), (sc2, m2) = scaleMin(2 * g + 1, scales)
            let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
            let u1 = UInt8(1) << (2 * g), u2 = UInt8(2) << (2 * g)
            for l in 0..<32 {
                let q = byte(qs, 32 * g + l), h = byte(qh, l)
                y[64 * g + l] = d1 * Float((q & 0x0F) + (h & u1 != 0 ? 16 : 0)) - mm1
                y[64 * g + 32 + l] = d2 * Float((q >> 4) + (h & u2 != 0 ? 16 : 0)) - mm2
            }
        }
    }

    /// Super-block of 256: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales,
    /// d (f16); x = (d * scale) * (q - 32), one scale per 16 values.
    @inline(__always) package static func q6_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 208)
        for n in 0..<2 {
            let ql = b + 64 * n, qh = b + 128 + 32 * n, sc = b + 192 + 8 * n, out = y + 128 * n
            for l in 0..<32 {
                let s = l / 16
                let a = byte(ql, l), c = byte(ql, l + 32), h = byte(qh, l)
                let q1 = Int((a & 0x0F) | ((h & 3) << 4)) - 32
                let q2 = Int((c & 0x0F) | (((h >> 2) & 3) << 4)) - 32
                let q3 = Int((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = Int((c >> 4) | (((h >> 6) & 3) << 4)) - 32
                func scale(_ k: Int) -> Float { d * Float(Int8(bitPattern: byte(sc, k))) }
                out[l] = scale(s) * Float(q1)
                out[l + 32] = scale(s + 2) * Float(q2)
                out[l + 64] = scale(s + 4) * Float(q3)
                out[l + 96] = scale(s + 6) * Float(q4)
            }
        }
    }
}
