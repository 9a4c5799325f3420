import Foundation

/// Writes safetensors files. The file is written beside its destination under a
/// temporary name and renamed into place, so a crash never leaves a half-written file
/// where a user expects a complete one.
public struct SafeTensorsWriter {
    public struct Entry {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var data: Data

        public init(name: String, dtype: DType, shape: [Int], data: Data) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
        }

        /// An F32 tensor from floats.
        public init(name: String, shape: [Int], floats: UnsafeBufferPointer<Float>) {
            self.init(name: name, dtype: .f32, shape: shape, data: Data(buffer: floats))
        }

        public init(name: String, shape: [Int], floats: [Float]) {
            self.init(name: name, dtype: .f32, shape: shape, data: floats.withUnsafeBufferPointer { Data(buffer: $0) })
        }
    }

    public var entries: [Entry] = []
    public var metadata: [String: String] = ["format": "pt"]

    public init() {}

    public mutating func add(_ entry: Entry) { entries.append(entry) }

    /// The complete file contents: header padded with spaces to a multiple of 8 bytes so
    /// that the data of every F32 tensor is aligned.
    public func serialized() throws -> Data {
        let sorted = entries.sorted { $0.name < $1.name }
        var out = try Self.header(sorted.map { .init(name: $0.name, dtype: $0.dtype, shape: $0.shape, byteCount: $0.data.count) },
                                  metadata: metadata)
        for e in sorted { out.append(e.data) }
        return out
    }

    /// A tensor's header entry: what the header needs before its bytes exist.
    public struct Layout: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var byteCount: Int
        public init(name: String, dtype: DType, shape: [Int], byteCount: Int) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.byteCount = byteCount
        }
    }

    /// The 8-byte header length and the JSON header (padded with spaces to a multiple of 8)
    /// of a file whose tensors are `sorted` (by name), data laid out in that order.
    package static func header(_ sorted: [Layout], metadata: [String: String]) throws -> Data {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for e in sorted {
            header[e.name] = ["dtype": e.dtype.rawValue, "shape": e.shape, "data_offsets": [offset, offset + e.byteCount]]
            offset += e.byteCount
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        return out
    }

    public func write(to path: String) throws {
        try AtomicFile.write(try serialized(), to: path)
    }
}

/// A safetensors file written tensor by tensor, for files larger than memory: the header
/// goes first (every size is known from shapes and dtypes), then each tensor's bytes in
/// name order as the caller produces them, so only one tensor is ever held. Byte for byte
/// what SafeTensorsWriter.serialized gives for the same tensors. Written under a temporary
/// name beside `path`, fsynced and renamed into place by `finish` (AtomicFile's rules); a
/// writer dropped before `finish` removes its temporary.
public final class SafeTensorsStreamWriter {
    /// The tensors in the order their bytes must be written (sorted by name).
    public let order: [SafeTensorsWriter.Layout]
    private let file: AtomicFile.Stream
    private var next = 0

    public init(path: String, tensors: [SafeTensorsWriter.Layout], metadata: [String: String] = ["format": "pt"]) throws {
        order = tensors.sorted { $0.name < $1.name }
        let header = try SafeTensorsWriter.header(order, metadata: metadata)
        file = try AtomicFile.Stream(path: path, totalBytes: header.count + order.reduce(0) { $0 + $1.byteCount })
        try file.append(header)
    }

    /// The name of the tensor whose bytes come next, nil once all are written.
    public var nextTensor: SafeTensorsWriter.Layout? { next < order.count ? order[next] : nil }

    /// Writes the bytes of the next tensor (`name`, exactly its byte count).
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard let t = nextTensor, t.name == name, bytes.count == t.byteCount else {
            throw MoETuneError.invalid("internal: safetensors stream to \(file.path) expected \(nextTensor.map { "\($0.name) (\($0.byteCount) bytes)" } ?? "no more tensors"), got \(name) (\(bytes.count) bytes)")
        }
        try file.append(bytes)
        next += 1
    }

    /// Checks every tensor was written, then fsyncs and renames the file into place.
    public func finish() throws {
        guard file.isOpen else { throw MoETuneError.invalid("internal: safetensors stream to \(file.path) was abandoned") }
        guard next == order.count else {
            file.abort()
            throw MoETuneError.invalid("internal: safetensors stream to \(file.path) finished after \(next) of \(order.count) tensors")
        }
        try file.finish()
    }
}
