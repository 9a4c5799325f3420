import Foundation
import MoEFormats
import MoEText

/// An owned, 64-byte aligned, fixed-size buffer of Float. Activations, gradients and
/// converted weights live in these; the hot path only slices them. A zeroed buffer of a
/// MiB or more is mapped from the kernel's zero pages (mmap), not cleared: its pages are
/// touched only when first written, so a buffer sized for the longest batch costs only
/// what a call uses (the decoder's 2048-row buffers for a few hundred rows).
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// Bytes mapped with mmap (0: from posix_memalign).
    private let mappedBytes: Int

    public init(count: Int, zeroed: Bool = true) {
        self.count = count
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        if zeroed, bytes >= 1 << 20,
           let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED {
            mappedBytes = bytes
            pointer = p.bindMemory(to: Float.self, capacity: max(count, 1))
            return
        }
        mappedBytes = 0
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("out of memory allocating \(bytes) bytes")
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        if zeroed { pointer.initialize(repeating: 0, count: max(count, 1)) }
    }

    deinit {
        if mappedBytes > 0 { munmap(pointer, mappedBytes) } else { free(pointer) }
    }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

/// A read-only row-major matrix [rows, cols]: a view over fp32 weights owned elsewhere, or a
/// frozen weight in another storage, which only the linear-layer products (Layers/Linear.swift)
/// read. A new weight format is one more `Storage` case and one more branch there.
public struct Matrix: @unchecked Sendable {
    public enum Storage: @unchecked Sendable {
        /// fp32 at `pointer`.
        case fp32
        /// 4-bit NF4 (QLoRA); `pointer` is not to be read.
        case nf4(NF4Weight)
        /// ggml blocks of a GGUF file; `pointer` is not to be read.
        case ggml(GGMLWeight)
        /// A compressed weight held transposed in a fused tensor (GPT-OSS's NF4 experts);
        /// `pointer` is not to be read.
        case transposed(TransposedWeight)
        /// bfloat16 (`base_dtype: bf16`); `pointer` is not to be read.
        case bf16(BF16Weight)
    }

    public let pointer: UnsafePointer<Float>
    public let rows: Int
    public let cols: Int
    public let storage: Storage

    public init(_ pointer: UnsafePointer<Float>, rows: Int, cols: Int) {
        self.pointer = pointer
        self.rows = rows
        self.cols = cols
        storage = .fp32
    }

    private init(rows: Int, cols: Int, storage: Storage) {
        pointer = UnsafePointer(Matrix.none.pointer)
        self.rows = rows
        self.cols = cols
        self.storage = storage
    }

    public init(nf4: NF4Weight) { self.init(rows: nf4.rows, cols: nf4.cols, storage: .nf4(nf4)) }
    public init(ggml: GGMLWeight) { self.init(rows: ggml.rows, cols: ggml.cols, storage: .ggml(ggml)) }
    public init(bf16: BF16Weight) { self.init(rows: bf16.rows, cols: bf16.cols, storage: .bf16(bf16)) }
    public init(transposed: TransposedWeight) {
        self.init(rows: transposed.outFeatures, cols: transposed.inFeatures, storage: .transposed(transposed))
    }

    /// The NF4 storage of a quantized weight, if that is how it is held.
    public var nf4: NF4Weight? { if case .nf4(let q) = storage { return q }; return nil }
    /// The ggml block storage of a weight read from GGUF, if that is how it is held.
    public var ggml: GGMLWeight? { if case .ggml(let g) = storage { return g }; return nil }
    /// The transposed compressed storage (GPT-OSS's NF4 experts), if that is how it is held.
    public var transposed: TransposedWeight? { if case .transposed(let t) = storage { return t }; return nil }
    /// The bf16 storage of a weight (`base_dtype: bf16`), if that is how it is held.
    public var bf16: BF16Weight? { if case .bf16(let b) = storage { return b }; return nil }

    /// Whether only the products can read this weight (`pointer` is not the weight).
    public var isQuantized: Bool {
        switch storage {
        case .fp32: return false
        case .nf4, .ggml, .transposed, .bf16: return true
        }
    }

    private static let none = FloatBuffer(count: 1)
}
