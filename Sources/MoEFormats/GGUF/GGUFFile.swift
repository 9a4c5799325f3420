import Foundation

/// One tensor of a GGUF file, validated against the file.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let type: GGMLType
    /// ggml's dimensions, fastest-varying first (ne[0] = the length of a row).
    public let dims: [Int]
    /// Byte offset of the data from the start of the file.
    public let offset: Int
    public let byteCount: Int
    /// The shape in row-major (PyTorch) order: dims reversed, so a weight [out, in].
    public var shape: [Int] { dims.reversed() }
    public var count: Int { dims.reduce(1, *) }
}

/// A memory-mapped GGUF file (version 2 or 3, little-endian): the magic "GGUF", version,
/// tensor and key/value counts, the key/value metadata, the tensor infos (name, dims,
/// ggml type, offset into the data section), padding to `general.alignment` (32 when
/// absent), then the tensor data. Every count, length, size and offset is checked against
/// the file before it is used; a malformed file is one error naming the key or tensor.
public final class GGUFFile: @unchecked Sendable {
    /// Whether a model path names a GGUF file rather than a Hugging Face folder.
    package static func isGGUFPath(_ path: String) -> Bool { path.lowercased().hasSuffix(".gguf") }
    /// The metadata key moe-tune writes into every GGUF it makes (its value: the command):
    /// what lets --overwrite tell moe-tune's own output from a user's file.
    public static let writerKey = "moe_tune.writer"
    /// Whether `path` is a well-formed GGUF that moe-tune wrote (it has `writerKey`).
    public static func isMoETuneOutput(_ path: String) -> Bool {
        guard let f = try? GGUFFile(path: path), case .string? = f.metadata[writerKey] else { return false }
        return true
    }
    public let path: String
    public let version: Int
    /// Metadata in file order.
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Offset of the data section from the start of the file.
    public let dataOffset: Int
    private let index: [String: Int]
    /// The file's one read-only mapping; block weights of a model point into it and keep it.
    package let mapping: MappedFile
    private var base: UnsafeRawPointer { mapping.base }

    public init(path: String) throws {
        self.path = path
        let mapping = try MappedFile(path: path, minimumSize: 24, requireRegular: true) { size in
            "truncated GGUF file (\(size) bytes, shorter than its header)"
        }
        let size = mapping.size
        var r = GGUFCursor(base: mapping.base, size: size, path: path)
        let (version, nTensors, nKV) = try Self.readHeader(&r, path: path, size: size)
        let (keys, metadata) = try Self.readMetadata(&r, count: nKV, path: path)
        let alignment = try Self.alignment(metadata, path: path)
        let raws = try Self.readTensorInfos(&r, count: nTensors, path: path)
        let dataOffset = (r.position + alignment - 1) / alignment * alignment
        guard dataOffset <= size || raws.isEmpty else {   // a vocabulary-only file has no data section
            throw MoETuneError.file(path: path, message: "truncated GGUF file: the data section would start at \(dataOffset) but the file has \(size) bytes")
        }
        let tensors = try raws.map { try Self.place($0, dataOffset: dataOffset, alignment: alignment, size: size, path: path) }
        try Self.checkNoOverlap(tensors, path: path)
        self.version = version
        self.keys = keys
        self.metadata = metadata
        self.alignment = alignment
        self.dataOffset = dataOffset
        self.tensors = tensors
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        self.index = index
        self.mapping = mapping
    }

    /// The magic, the version (2 or 3) and the tensor and metadata counts, each count bounded
    /// by what a file of `size` bytes can hold (a key/value needs at least 12 bytes, a tensor
    /// info 24).
    static func readHeader(_ r: inout GGUFCursor, path: String, size: Int) throws -> (version: Int, tensors: Int, keys: Int) {
        let magic = try r.bytes(4, what: "the magic")
        guard Array(magic) == Array("GGUF".utf8) else {
            throw MoETuneError.file(path: path, message: "not a GGUF file (the first four bytes are not 'GGUF')")
        }
        let version = Int(try r.u32(what: "the version"))
        guard version == 2 || version == 3 else {
            throw MoETuneError.file(path: path, message: version == 1 ? "GGUF version 1 is not supported (only 2 and 3)"
                : version > 0xFFFF ? "GGUF version \(version): a big-endian or corrupt file (only little-endian versions 2 and 3 are supported)"
                : "GGUF version \(version) is not supported (only 2 and 3)")
        }
        let nTensors = try r.u64(what: "the tensor count")
        let nKV = try r.u64(what: "the metadata count")
        guard nKV <= UInt64(size / 12), nTensors <= UInt64(size / 24) else {
            throw MoETuneError.file(path: path, message: "header claims \(nKV) metadata entries and \(nTensors) tensors, more than a file of \(size) bytes can hold")
        }
        return (version, Int(nTensors), Int(nKV))
    }

    /// `count` key/value entries: keys in file order, each key once, each type known.
    static func readMetadata(_ r: inout GGUFCursor, count: Int, path: String) throws -> ([String], [String: GGUFValue]) {
        var keys: [String] = [], metadata: [String: GGUFValue] = [:]
        for i in 0..<count {
            let key = try r.string(what: "the key of metadata entry \(i)")
            guard metadata[key] == nil else { throw MoETuneError.file(path: path, message: "metadata key \(Printable.quoted(key)) appears twice") }
            let rawType = try r.u32(what: "the type of \(Printable.quoted(key))")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)): unknown value type \(rawType)")
            }
            metadata[key] = try r.value(type, key: key, depth: 0)
            keys.append(key)
        }
        return (keys, metadata)
    }

    /// `general.alignment`: a uint32 power of two; 32 when absent.
    static func alignment(_ metadata: [String: GGUFValue], path: String) throws -> Int {
        guard let a = metadata["general.alignment"] else { return 32 }
        guard case .uint32(let v) = a else {
            throw MoETuneError.file(path: path, message: "metadata 'general.alignment' must be a uint32, got \(a.type.name)")
        }
        guard v > 0, v & (v - 1) == 0 else {
            throw MoETuneError.file(path: path, message: "metadata 'general.alignment' must be a power of two, got \(v)")
        }
        return Int(v)
    }

    /// A tensor info as the file states it, before it is checked against the data section.
    struct RawTensorInfo { var name: String; var dims: [Int]; var type: GGMLType; var offset: UInt64 }

    /// `count` tensor infos: unique names, 1 to 4 dimensions of at most Int32.max, a supported type.
    static func readTensorInfos(_ r: inout GGUFCursor, count: Int, path: String) throws -> [RawTensorInfo] {
        var raws: [RawTensorInfo] = []
        var seen = Set<String>()
        for i in 0..<count {
            let name = try r.string(what: "the name of tensor \(i)")
            guard seen.insert(name).inserted else { throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)) appears twice") }
            let nDims = try r.u32(what: "the dimension count of tensor \(Printable.quoted(name))")
            guard (1...4).contains(nDims) else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): \(nDims) dimensions (ggml allows 1 to 4)")
            }
            var dims: [Int] = []
            for _ in 0..<Int(nDims) {
                let d = try r.u64(what: "the dimensions of tensor \(Printable.quoted(name))")
                guard d <= UInt64(Int32.max) else {
                    throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): dimension \(d) is too large")
                }
                dims.append(Int(d))
            }
            let rawType = try r.u32(what: "the type of tensor \(Printable.quoted(name))")
            guard let type = GGMLType(rawValue: rawType) else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)): tensor type \(GGMLType.name(of: rawType)) is not supported (supported: \(GGMLType.supportedNames))")
            }
            let offset = try r.u64(what: "the data offset of tensor \(Printable.quoted(name))")
            raws.append(RawTensorInfo(name: name, dims: dims, type: type, offset: offset))
        }
        return raws
    }

    /// A tensor placed in the data section: a size that does not overflow, whole blocks per
    /// row, an aligned offset, and every byte inside the file.
    static func place(_ t: RawTensorInfo, dataOffset: Int, alignment: Int, size: Int, path: String) throws -> GGUFTensorInfo {
        let (count, overflow) = t.dims.reduce((1, false)) { acc, d in
            let (p, o) = acc.0.multipliedReportingOverflow(by: d); return (p, acc.1 || o)
        }
        guard !overflow, count <= Int(Int32.max) * 16 else {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(t.name)): shape \(Array(t.dims.reversed())) is too large")
        }
        guard t.dims[0] % t.type.blockSize == 0 else {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(t.name)): rows of \(t.dims[0]) values are not a multiple of \(t.type.name)'s block of \(t.type.blockSize)")
        }
        guard t.offset % UInt64(alignment) == 0 else {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(t.name)): data offset \(t.offset) is not a multiple of the alignment \(alignment)")
        }
        let bytes = t.type.bytes(count: count)
        guard t.offset <= UInt64(size - dataOffset), bytes <= size - dataOffset - Int(t.offset) else {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(t.name)): its \(bytes) bytes at data offset \(t.offset) run past the end of the file (\(size - dataOffset) data bytes); the file may be truncated")
        }
        return GGUFTensorInfo(name: t.name, type: t.type, dims: t.dims, offset: dataOffset + Int(t.offset), byteCount: bytes)
    }

    /// No two tensors' bytes overlap.
    static func checkNoOverlap(_ tensors: [GGUFTensorInfo], path: String) throws {
        let spans = tensors.filter { $0.byteCount > 0 }.sorted { ($0.offset, $0.name) < ($1.offset, $1.name) }
        for (a, b) in zip(spans, spans.dropFirst()) where b.offset < a.offset + a.byteCount {
            throw MoETuneError.file(path: path, message: "tensors \(Printable.quoted(a.name)) and \(Printable.quoted(b.name)) overlap in the data")
        }
    }

    public func tensor(_ name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    /// The raw bytes of a tensor (valid while this object lives).
    public func bytes(of t: GGUFTensorInfo) -> UnsafeRawPointer { base + t.offset }

    /// Tensor `name` dequantized to fp32 (a new array).
    public func floats(_ name: String) throws -> [Float] {
        guard let t = tensor(name) else { throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)) not found") }
        var out = [Float](repeating: 0, count: t.count)
        out.withUnsafeMutableBufferPointer { GGMLDequantize.run(t.type, bytes(of: t), count: t.count, into: $0.baseAddress!) }
        return out
    }

    /// Tells the kernel the mapped pages of a tensor are no longer needed.
    public func release(_ t: GGUFTensorInfo) { mapping.release(offset: t.offset, count: t.byteCount) }

    // MARK: Typed metadata access (errors name the key)

    public func value(_ key: String) -> GGUFValue? { metadata[key] }

    public func int(_ key: String) throws -> Int? {
        guard let v = metadata[key] else { return nil }
        guard let i = v.integer else { throw typeError(key, v, "an integer") }
        return i
    }

    public func requiredInt(_ key: String) throws -> Int {
        guard let v = try int(key) else { throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)) is missing") }
        return v
    }

    public func double(_ key: String) throws -> Double? {
        guard let v = metadata[key] else { return nil }
        guard let d = v.double else { throw typeError(key, v, "a float") }
        return d
    }

    public func string(_ key: String) throws -> String? {
        guard let v = metadata[key] else { return nil }
        guard let s = v.string else { throw typeError(key, v, "a string") }
        return s
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let v = metadata[key] else { return nil }
        guard let b = v.bool else { throw typeError(key, v, "a bool") }
        return b
    }

    public func strings(_ key: String) throws -> [String]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(.string, let a) = v else { throw typeError(key, v, "an array of strings") }
        return a.map { $0.string! }
    }

    public func ints(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let t, let a) = v, t != .array, t != .string, t != .bool, t.fixedSize != nil,
              t != .float32, t != .float64 else { throw typeError(key, v, "an array of integers") }
        return a.map { $0.integer ?? 0 }
    }

    public func floatArray(_ key: String) throws -> [Float]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let t, let a) = v, t == .float32 || t == .float64 else { throw typeError(key, v, "an array of floats") }
        return a.map { Float($0.double!) }
    }

    private func typeError(_ key: String, _ v: GGUFValue, _ expected: String) -> MoETuneError {
        var got = v.type.name
        if case .array(let t, _) = v { got = "an array of \(t.name)" }
        return .file(path: path, message: "metadata \(Printable.quoted(key)) must be \(expected), got \(got)")
    }
}

/// Bounds-checked little-endian reads from a mapped file.
package struct GGUFCursor {
    package let base: UnsafeRawPointer
    package let size: Int
    package let path: String
    package var position = 0

    private func need(_ n: Int, _ what: String) throws {
        guard n >= 0, n <= size - position else {
            throw MoETuneError.file(path: path, message: "truncated GGUF file: \(what) runs past the end (offset \(position), \(size) bytes)")
        }
    }

    package mutating func bytes(_ n: Int, what: String) throws -> UnsafeRawBufferPointer {
        try need(n, what)
        defer { position += n }
        return UnsafeRawBufferPointer(start: base + position, count: n)
    }

    package mutating func load<T: FixedWidthInteger>(_: T.Type, what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        defer { position += MemoryLayout<T>.size }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: position, as: T.self))
    }

    package mutating func u32(what: String) throws -> UInt32 { try load(UInt32.self, what: what) }
    package mutating func u64(what: String) throws -> UInt64 { try load(UInt64.self, what: what) }

    package mutating func string(what: String) throws -> String {
        let n = try u64(what: what)
        guard n <= UInt64(size - position) else {
            throw MoETuneError.file(path: path, message: "truncated GGUF file: \(what) (a string of \(n) bytes) runs past the end (offset \(position), \(size) bytes)")
        }
        return String(decoding: try bytes(Int(n), what: what), as: UTF8.self)
    }

    package mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        let what = "the value of \(Printable.quoted(key))"
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, what: what))
        case .int8: return .int8(try load(Int8.self, what: what))
        case .uint16: return .uint16(try load(UInt16.self, what: what))
        case .int16: return .int16(try load(Int16.self, what: what))
        case .uint32: return .uint32(try load(UInt32.self, what: what))
        case .int32: return .int32(try load(Int32.self, what: what))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, what: what)))
        case .uint64: return .uint64(try load(UInt64.self, what: what))
        case .int64: return .int64(try load(Int64.self, what: what))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, what: what)))
        case .bool:
            let b = try load(UInt8.self, what: what)
            guard b <= 1 else { throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)): bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string: return .string(try string(what: what))
        case .array:
            guard depth < 8 else { throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)): arrays nested deeper than 8") }
            let rawType = try u32(what: "the element type of \(Printable.quoted(key))")
            guard let et = GGUFValueType(rawValue: rawType) else {
                throw MoETuneError.file(path: path, message: "metadata \(Printable.quoted(key)): unknown array element type \(rawType)")
            }
            let n = try u64(what: "the length of \(Printable.quoted(key))")
            // Every element takes at least one byte (a string or array at least 8 or 12).
            let minSize = et.fixedSize ?? (et == .string ? 8 : 12)
            guard n <= UInt64((size - position) / minSize) else {
                throw MoETuneError.file(path: path, message: "truncated GGUF file: \(Printable.quoted(key)) claims \(n) elements, more than the \(size - position) bytes left can hold")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { items.append(try value(et, key: key, depth: depth + 1)) }
            return .array(et, items)
        }
    }
}
