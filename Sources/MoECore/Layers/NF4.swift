import CKernels
import Foundation
import MoEFormats
import MoEText

/// 4-bit NormalFloat weights exactly as bitsandbytes stores them: the [out, in] weight
/// flattened row-major, cut into blocks of 64 values; each block keeps absmax = max |x|,
/// each value x / absmax maps to the nearest of 16 codes (ties to the lower code, as
/// bitsandbytes' comparison tree does); two codes per byte, the even-index value in the
/// high nibble. With double quantization the absmax values, less their mean, are
/// themselves quantized in blocks of 256 to 8 bits with bitsandbytes' signed dynamic map.
public final class NF4Weight: @unchecked Sendable {
    public static let code: [Float] = [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]
    public static let blockSize = 64
    public static let nestedBlockSize = 256

    public let rows: Int
    public let cols: Int
    /// Packed codes, (rows*cols + 1) / 2 bytes.
    public let packed: UnsafeMutablePointer<UInt8>
    /// Block scales: fp32 absmax per block, or (double quantization) 8-bit codes into
    /// `nestedMap` scaled by `nestedAbsmax` per 256 blocks, plus `offset`.
    public let absmax: UnsafeMutablePointer<Float>?
    public let absmaxCodes: UnsafeMutablePointer<UInt8>?
    public let nestedAbsmax: [Float]
    public let nestedMap: [Float]
    public let offset: Float
    public var count: Int { rows * cols }
    public var blocks: Int { (count + NF4Weight.blockSize - 1) / NF4Weight.blockSize }
    public var doubleQuantized: Bool { absmaxCodes != nil }

    package init(rows: Int, cols: Int, packed: UnsafeMutablePointer<UInt8>, absmax: UnsafeMutablePointer<Float>?,
         absmaxCodes: UnsafeMutablePointer<UInt8>?, nestedAbsmax: [Float], nestedMap: [Float], offset: Float) {
        self.rows = rows; self.cols = cols; self.packed = packed; self.absmax = absmax; self.absmaxCodes = absmaxCodes
        self.nestedAbsmax = nestedAbsmax; self.nestedMap = nestedMap; self.offset = offset
    }

    deinit {
        packed.deallocate()
        absmax?.deallocate()
        absmaxCodes?.deallocate()
    }

    /// Quantizes x [rows, cols] (fp32).
    public static func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int, doubleQuant: Bool) -> NF4Weight {
        let n = rows * cols
        let nblocks = (n + blockSize - 1) / blockSize
        let packed = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, (n + 1) / 2))
        packed.initialize(repeating: 0, count: max(1, (n + 1) / 2))
        let absmax = UnsafeMutablePointer<Float>.allocate(capacity: max(1, nblocks))
        // Blocks of 64 start at even indices, so a block owns whole bytes.
        parallelChunks(nblocks, minChunk: 64) { range in
            for b in range {
                let lo = b * blockSize, hi = min(n, lo + blockSize)
                var m: Float = 0
                for i in lo..<hi { m = max(m, abs(x[i])) }
                absmax[b] = m
                let inv: Float = m > 0 ? 1 / m : 0
                for i in lo..<hi {
                    let c = nearestCode(x[i] * inv)
                    if i & 1 == 0 { packed[i >> 1] = c << 4 } else { packed[i >> 1] |= c }
                }
            }
        }
        guard doubleQuant else {
            return NF4Weight(rows: rows, cols: cols, packed: packed, absmax: absmax, absmaxCodes: nil,
                             nestedAbsmax: [], nestedMap: [], offset: 0)
        }
        let (codes, nested, mean) = quantizeBlockScales(absmax, count: nblocks)
        absmax.deallocate()
        return NF4Weight(rows: rows, cols: cols, packed: packed, absmax: nil, absmaxCodes: codes,
                         nestedAbsmax: nested, nestedMap: dynamicMap, offset: mean)
    }

    /// Index of the nearest code to v in [-1, 1]; the thresholds are the midpoints
    /// between neighbouring codes and a tie goes to the lower code (v must exceed it).
    @inline(__always)
    package static func nearestCode(_ v: Float) -> UInt8 {
        var lo = 0
        for i in 0..<15 where v > midpoints[i] { lo = i + 1 }
        return UInt8(lo)
    }

    package static let midpoints: [Float] = (0..<15).map { (code[$0] + code[$0 + 1]) / 2 }

    /// Double quantization: subtract the mean, then blockwise (256) 8-bit with the signed
    /// dynamic map: per block scale = max |v|, code = nearest map entry to v / scale.
    package static func quantizeBlockScales(_ a: UnsafePointer<Float>, count n: Int) -> (UnsafeMutablePointer<UInt8>, [Float], Float) {
        var sum = 0.0
        for i in 0..<n { sum += Double(a[i]) }
        let mean = Float(sum / Double(n))
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, n))
        let nb = (n + nestedBlockSize - 1) / nestedBlockSize
        var nested = [Float](repeating: 0, count: nb)
        let map = dynamicMap
        for b in 0..<nb {
            let lo = b * nestedBlockSize, hi = min(n, lo + nestedBlockSize)
            var m: Float = 0
            for i in lo..<hi { m = max(m, abs(a[i] - mean)) }
            nested[b] = m
            for i in lo..<hi {
                let v = m > 0 ? (a[i] - mean) / m : 0
                // Binary search for the nearest of the sorted map values.
                var l = 0, h = map.count - 1
                while h - l > 1 {
                    let mid = (l + h) / 2
                    if map[mid] <= v { l = mid } else { h = mid }
                }
                codes[i] = UInt8(abs(v - map[l]) <= abs(map[h] - v) ? l : h)
            }
        }
        return (codes, nested, mean)
    }

    /// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    /// for i in 0..<7, 2^i + 1 points linspace(0.1, 1) (fp32), their midpoints times
    /// ±10^(i-6); plus 0 and 1; sorted.
    public static let dynamicMap: [Float] = {
        var data: [Double] = []
        for i in 0..<7 {
            let items = (1 << i) + 1
            // torch.linspace in fp32: start + step * j for the first half, end - step * (n - 1 - j)
            // after, each a fused multiply-add (one rounding), which the Double product emulates.
            let start: Float = 0.1, end: Float = 1, step = (end - start) / Float(items - 1)
            let half = items / 2
            let bounds: [Float] = (0..<items).map { j in
                j < half ? Float(Double(start) + Double(step) * Double(j)) : Float(Double(end) - Double(step) * Double(items - 1 - j))
            }
            // The midpoints times 10^(i-6), in fp32 as torch computes them.
            let scale = Float(Foundation.pow(10.0, Double(-6 + i)))
            for j in 0..<(items - 1) {
                let mean = (bounds[j] + bounds[j + 1]) / 2
                data.append(Double(scale * mean))
                data.append(Double(-(scale * mean)))
            }
        }
        data.append(0)
        data.append(1)
        return data.map { Float($0) }.sorted()
    }()

    /// The scale of block b.
    @inline(__always)
    public func blockScale(_ b: Int) -> Float {
        if let absmax { return absmax[b] }
        return nestedMap[Int(absmaxCodes![b])] * nestedAbsmax[b / NF4Weight.nestedBlockSize] + offset
    }

    /// Rows r0 ..< r0 + count as a weight of their own (one expert's slice of a fused 4-bit
    /// tensor), with the same codes and block scales; the slice must start and end on a
    /// block boundary. Its scales are kept as fp32 (what `blockScale` gives), so it
    /// dequantizes to exactly the same values.
    public func slice(rows r0: Int, count: Int) -> NF4Weight {
        let start = r0 * cols, n = count * cols, bs = NF4Weight.blockSize
        precondition(start % bs == 0 && n % bs == 0 && r0 + count <= rows, "NF4 slice off a block boundary")
        let packed = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, n / 2))
        packed.update(from: self.packed + start / 2, count: n / 2)
        let absmax = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n / bs))
        for b in 0..<(n / bs) { absmax[b] = blockScale(start / bs + b) }
        return NF4Weight(rows: count, cols: cols, packed: packed, absmax: absmax, absmaxCodes: nil,
                         nestedAbsmax: [], nestedMap: [], offset: 0)
    }

    /// Writes rows r0..<r1 as fp32 into dst [(r1 - r0), cols]: the vectorised C kernel
    /// (CKernels/nf4.c, AVX-512 or AVX2 chosen at run time), split over the workers in runs
    /// of whole blocks outside a parallel region. Each value is code × block scale, the same
    /// fp32 product bitsandbytes computes.
    public func dequantizeRows(_ r0: Int, _ r1: Int, into dst: UnsafeMutablePointer<Float>) {
        let start = r0 * cols, end = r1 * cols
        let bs = NF4Weight.blockSize
        NF4Weight.code.withUnsafeBufferPointer { code in
            nestedMap.withUnsafeBufferPointer { map in
                nestedAbsmax.withUnsafeBufferPointer { nested in
                    parallelChunks((end - start + bs - 1) / bs, minChunk: 64) { range in
                        let lo = start + range.lowerBound * bs, hi = min(end, start + range.upperBound * bs)
                        mt_nf4_dequant(dst + (lo - start), self.packed, lo, hi, code.baseAddress, self.absmax,
                                       self.absmaxCodes, map.baseAddress, nested.baseAddress, self.offset)
                    }
                }
            }
        }
    }
}

extension NF4Weight: RowDequantizing {}
