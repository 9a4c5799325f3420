/// The element types of ggml tensors that moe-tune reads (and the block layout of each),
/// with ggml's numbering as stored in GGUF tensor infos. A quantized type packs `blockSize`
/// consecutive values of a row into `typeSize` bytes; a row's length must be a multiple
/// of the block size.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8
    case q4_K = 12, q5_K = 13, q6_K = 14
    case bf16 = 30

    /// Values per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: return 32
        case .q4_K, .q5_K, .q6_K: return 256
        }
    }

    /// Bytes per block.
    public var typeSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18     // f16 d, 16 bytes of 4-bit values
        case .q4_1: return 20     // f16 d, f16 m, 16 bytes
        case .q5_0: return 22     // f16 d, 4 bytes of high bits, 16 bytes
        case .q5_1: return 24     // f16 d, f16 m, 4 bytes, 16 bytes
        case .q8_0: return 34     // f16 d, 32 int8
        case .q4_K: return 144    // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes
        case .q5_K: return 176    // as q4_K plus 32 bytes of high bits
        case .q6_K: return 210    // 128 low 4 bits, 64 high 2 bits, 16 int8 scales, f16 d
        }
    }

    /// ggml's name (as gguf-py's GGMLQuantizationType spells it).
    public var name: String { GGMLType.names[Int(rawValue)] ?? "\(rawValue)" }

    /// Bytes of `count` values (count a multiple of the block size).
    public func bytes(count: Int) -> Int { count / blockSize * typeSize }

    /// Every ggml type id gguf 0.19 knows, for messages about the ones moe-tune does not read.
    package static let names: [Int: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
        10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
        17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
        23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
        30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
    ]

    /// The name of any type id, known to moe-tune or not.
    public static func name(of id: UInt32) -> String { names[Int(id)] ?? "unknown type \(id)" }

    public static var supportedNames: String { allCases.map(\.name).joined(separator: ", ") }
}
