import Foundation

/// An owned, 64-byte aligned, fixed-size buffer of Float. Activations, gradients and
/// converted weights live in these; the hot path only slices them.
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int, zeroed: Bool = true) {
        self.count = count
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("out of memory allocating \(bytes) bytes")
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        if zeroed { pointer.initialize(repeating: 0, count: max(count, 1)) }
    }

    deinit { free(pointer) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

/// A read-only row-major matrix [rows, cols]: a view over fp32 weights owned elsewhere,
/// or 4-bit NF4 weights (QLoRA) or ggml blocks (GGUF), which only the linear-layer products read.
public struct Matrix: @unchecked Sendable {
    public let pointer: UnsafePointer<Float>
    public let rows: Int
    public let cols: Int
    /// The NF4 storage of a quantized weight; `pointer` is then not to be read.
    public let nf4: NF4Weight?
    /// The ggml block storage of a weight read from GGUF; `pointer` is then not to be read.
    public let ggml: GGMLWeight?
    /// A compressed weight held transposed in a fused tensor (GPT-OSS's NF4 experts).
    public let transposed: TransposedWeight?
    /// Packed copies of a frozen fp32 weight for CKernels' packed GEMM (`prepacked()`);
    /// `pointer` stays readable.
    public let packed: PackedWeight?

    public init(_ pointer: UnsafePointer<Float>, rows: Int, cols: Int, packed: PackedWeight? = nil) {
        self.pointer = pointer
        self.rows = rows
        self.cols = cols
        nf4 = nil
        ggml = nil
        transposed = nil
        self.packed = packed
    }

    public init(nf4: NF4Weight) {
        pointer = UnsafePointer(Matrix.none.pointer)
        rows = nf4.rows
        cols = nf4.cols
        self.nf4 = nf4
        ggml = nil
        transposed = nil
        packed = nil
    }

    public init(ggml: GGMLWeight) {
        pointer = UnsafePointer(Matrix.none.pointer)
        rows = ggml.rows
        cols = ggml.cols
        nf4 = nil
        self.ggml = ggml
        transposed = nil
        packed = nil
    }

    public init(transposed: TransposedWeight) {
        pointer = UnsafePointer(Matrix.none.pointer)
        rows = transposed.outFeatures
        cols = transposed.inFeatures
        nf4 = nil
        ggml = nil
        self.transposed = transposed
        packed = nil
    }

    /// Whether only the products can read this weight (NF4 or ggml blocks).
    public var isQuantized: Bool { nf4 != nil || ggml != nil || transposed != nil }

    private static let none = FloatBuffer(count: 1)
}
