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
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        let sorted = entries.sorted { $0.name < $1.name }
        for e in sorted {
            header[e.name] = ["dtype": e.dtype.rawValue, "shape": e.shape, "data_offsets": [offset, offset + e.data.count]]
            offset += e.data.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for e in sorted { out.append(e.data) }
        return out
    }

    public func write(to path: String) throws {
        try AtomicFile.write(try serialized(), to: path)
    }
}
