import Foundation

/// Writes a GGUF file (version 3, little-endian, alignment 32): metadata in the order
/// added, tensor infos, then each tensor's data at an aligned offset. The file goes to a
/// temporary name beside its destination and is renamed into place (AtomicFile).
public struct GGUFWriter {
    public struct Tensor {
        public var name: String
        public var type: GGMLType
        /// Row-major shape ([out, in] for a weight); GGUF stores it reversed.
        public var shape: [Int]
        public var data: [UInt8]
    }

    public private(set) var metadata: [(String, GGUFValue)] = []
    public private(set) var tensors: [Tensor] = []
    public let alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.0 == key }) { metadata[i].1 = value } else { metadata.append((key, value)) }
    }

    /// Adds a tensor of fp32 values [rows-major shape], encoded as `type` (which must be
    /// writable and whose block size divides the last dimension).
    public mutating func add(_ name: String, shape: [Int], floats: UnsafePointer<Float>, as type: GGMLType) {
        let count = shape.reduce(1, *)
        tensors.append(Tensor(name: name, type: type, shape: shape, data: GGMLQuantize.run(type, floats, count: count)))
    }

    /// Adds a tensor already encoded.
    public mutating func add(_ tensor: Tensor) { tensors.append(tensor) }

    public func serialized() -> Data {
        var out = Self.header(metadata: metadata, tensors: tensors.map { Layout(name: $0.name, type: $0.type, shape: $0.shape, byteCount: $0.data.count) },
                              alignment: alignment)
        for t in tensors {
            out.append(contentsOf: t.data)
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    /// A tensor's entry in the header: what the header needs before its data exists.
    public struct Layout: Sendable {
        public var name: String
        public var type: GGMLType
        public var shape: [Int]
        public var byteCount: Int
        public init(name: String, type: GGMLType, shape: [Int], byteCount: Int) {
            self.name = name; self.type = type; self.shape = shape; self.byteCount = byteCount
        }
    }

    /// Magic, version, counts, metadata and tensor infos, padded to `alignment`: the file up
    /// to the first tensor's data (each tensor's data is then padded to `alignment`).
    package static func header(metadata: [(String, GGUFValue)], tensors: [Layout], alignment: Int) -> Data {
        var out = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func str(_ s: String) { let b = Array(s.utf8); u64(UInt64(b.count)); out.append(contentsOf: b) }
        func raw(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): out.append(x)
            case .int8(let x): out.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .bool(let x): out.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float64(let x): u64(x.bitPattern)
            case .array(let t, let items):
                u32(t.rawValue); u64(UInt64(items.count))
                for i in items { raw(i) }
            }
        }
        out.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata { str(k); u32(v.type.rawValue); raw(v) }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            str(t.name)
            u32(UInt32(t.shape.count))
            for d in t.shape.reversed() { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offsets.append(offset)
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        return out
    }

    public func write(to path: String) throws {
        try AtomicFile.write(serialized(), to: path)
    }
}

/// A GGUF file written tensor by tensor, for models larger than memory: the header and
/// every tensor info go first (sizes follow from shapes and types), then each tensor's data
/// in the order of `tensors` as the caller produces it, padded to the alignment. Byte for
/// byte what GGUFWriter.serialized gives for the same metadata and tensors. Written under a
/// temporary name beside `path`, fsynced and renamed into place by `finish` (AtomicFile's
/// rules); a writer dropped before `finish` removes its temporary.
public final class GGUFStreamWriter {
    public let tensors: [GGUFWriter.Layout]
    private let file: AtomicFile.Stream
    private var next = 0
    private let alignment: Int
    public var totalBytes: Int { file.totalBytes }

    public init(path: String, metadata: [(String, GGUFValue)], tensors: [GGUFWriter.Layout], alignment: Int = 32) throws {
        self.tensors = tensors
        self.alignment = alignment
        let header = GGUFWriter.header(metadata: metadata, tensors: tensors, alignment: alignment)
        file = try AtomicFile.Stream(path: path, totalBytes: header.count + tensors.reduce(0) { $0 + ($1.byteCount + alignment - 1) / alignment * alignment })
        try file.append(header)
    }

    /// Writes the data of the next tensor (`name`, exactly its byte count) and its padding.
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard next < tensors.count, tensors[next].name == name, bytes.count == tensors[next].byteCount else {
            throw MoETuneError.invalid("internal: GGUF stream to \(file.path) expected \(next < tensors.count ? "\(tensors[next].name) (\(tensors[next].byteCount) bytes)" : "no more tensors"), got \(name) (\(bytes.count) bytes)")
        }
        let padding = [UInt8](repeating: 0, count: (alignment - bytes.count % alignment) % alignment)
        try file.append(bytes)
        try padding.withUnsafeBytes { try file.append($0) }
        next += 1
    }

    /// Checks every tensor was written, then fsyncs and renames the file into place.
    public func finish() throws {
        guard file.isOpen else { throw MoETuneError.invalid("internal: GGUF stream to \(file.path) was abandoned") }
        guard next == tensors.count else {
            file.abort()
            throw MoETuneError.invalid("internal: GGUF stream to \(file.path) finished after \(next) of \(tensors.count) tensors")
        }
        try file.finish()
    }

    /// Closes and removes the temporary (a failed or abandoned write).
    public func abort() { file.abort() }
}
