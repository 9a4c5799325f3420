import Foundation

/// Element types of the safetensors format that moe-tune reads or writes.
public enum DType: String, Sendable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    public var size: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }
}

/// One tensor entry of a safetensors header, validated against the file.
public struct TensorInfo: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte offset of the data from the start of the file.
    public let offset: Int
    public let byteCount: Int
    public var count: Int { shape.reduce(1, *) }

    package init(name: String, dtype: DType, shape: [Int], offset: Int, byteCount: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.offset = offset
        self.byteCount = byteCount
    }
}

/// A memory-mapped safetensors file: 8-byte little-endian header length, a JSON header
/// (name → dtype, shape, data_offsets relative to the end of the header; optional
/// __metadata__), then raw little-endian data. Every offset is checked against the
/// file size before any data is touched. The mapping lives as long as this object.
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    private let mapping: MappedFile
    private var base: UnsafeRawPointer { mapping.base }

    public init(path: String) throws {
        self.path = path
        let mapping = try MappedFile(path: path, minimumSize: 8, requireRegular: false) { size in
            "truncated safetensors file (\(size) bytes, no header)"
        }
        let base = mapping.base, size = mapping.size
        let headerLen = base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLen <= UInt64(size - 8) else {
            throw MoETuneError.file(path: path,
                message: "truncated safetensors file: header of \(headerLen) bytes but the file has \(size)")
        }
        let header = Data(bytes: base + 8, count: Int(headerLen))
        guard let obj = try? JSONSerialization.jsonObject(with: header), let json = obj as? [String: Any] else {
            throw MoETuneError.file(path: path, message: "safetensors header is not a JSON object")
        }
        if let dup = JSONDuplicateKeys.firstDuplicate(in: header) {
            throw MoETuneError.file(path: path, message: "the safetensors header names \(Printable.quoted(dup)) twice")
        }
        let dataStart = 8 + Int(headerLen)
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in json {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { metadata[k] = "\(v)" }
                continue
            }
            guard let entry = value as? [String: Any],
                  let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int],
                  let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): malformed header entry") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): unsupported dtype \(dtypeName)")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): negative dimension in shape \(shape)")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, end >= begin, end <= size - dataStart else {
                throw MoETuneError.file(path: path,
                    message: "tensor \(Printable.quoted(name)): data_offsets [\(begin), \(end)] run past the end of the file (\(size - dataStart) data bytes); the file may be truncated")
            }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let (p, o) = acc.0.multipliedReportingOverflow(by: d); return (p, acc.1 || o)
            }
            let (bytes, bytesOverflow) = count.multipliedReportingOverflow(by: dtype.size)
            guard !overflow, !bytesOverflow else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): shape \(shape) of \(dtypeName) is too large (its size overflows)")
            }
            guard bytes == end - begin else {
                throw MoETuneError.file(path: path,
                    message: "tensor \(Printable.quoted(name)): shape \(shape) of \(dtypeName) needs \(bytes) bytes but data_offsets give \(end - begin)")
            }
            tensors[name] = TensorInfo(name: name, dtype: dtype, shape: shape, offset: dataStart + begin, byteCount: end - begin)
        }
        // Two tensors sharing bytes would silently alias each other: refuse overlaps.
        let spans = tensors.values.filter { $0.byteCount > 0 }.sorted { ($0.offset, $0.name) < ($1.offset, $1.name) }
        for (a, b) in zip(spans, spans.dropFirst()) where b.offset < a.offset + a.byteCount {
            throw MoETuneError.file(path: path, message: "tensors \(Printable.quoted(a.name)) and \(Printable.quoted(b.name)) overlap in the data (data_offsets)")
        }
        self.tensors = tensors
        self.metadata = metadata
        self.mapping = mapping
    }

    /// The raw bytes of a tensor (valid while this object lives).
    public func bytes(of info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + info.offset, count: info.byteCount)
    }

    /// Tells the kernel the mapped pages of a tensor are no longer needed (after a
    /// conversion copied them), so the page cache does not count against us.
    public func release(_ info: TensorInfo) { mapping.release(offset: info.offset, count: info.byteCount) }
}

/// Conversions of stored element types to fp32.
public enum FloatConversion {
    /// bfloat16 is the top half of an IEEE float32.
    @inline(__always)
    public static func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Round-to-nearest-even float32 → bfloat16 (NaN stays NaN).
    @inline(__always)
    public static func floatToBF16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(bits >> 16) | 0x40 }
        let rounding = 0x7FFF + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }

    /// Converts `count` elements of `dtype` at `src` into `dst`.
    public static func toFloat(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) -> Bool {
        switch dtype {
        case .f32:
            memcpy(dst, src, count * 4)
        case .bf16:
            for i in 0..<count { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
        case .f16:
            for i in 0..<count { dst[i] = Float(Float16(bitPattern: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian)) }
        case .f64:
            for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
        default:
            return false
        }
        return true
    }
}
