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
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        func pad() { while out.count % alignment != 0 { out.append(0) } }
        pad()
        for t in tensors {
            out.append(contentsOf: t.data)
            pad()
        }
        return out
    }

    public func write(to path: String) throws {
        try AtomicFile.write(serialized(), to: path)
    }
}
