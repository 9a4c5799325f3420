import Foundation
import MoEFormats
import MoEText

/// What to quantize while loading (QLoRA): NF4 in blocks of 64, optionally with double
/// quantization of the block scales.
public struct QuantizationSpec: Equatable, Sendable {
    public var doubleQuant = true
    public init(doubleQuant: Bool = true) { self.doubleQuant = doubleQuant }
}

/// The JSON that bitsandbytes stores as "<name>.quant_state.bitsandbytes__nf4" (a UInt8 tensor).
package struct BnbQuantState: Codable {
    package var quant_type: String
    package var blocksize: Int
    package var dtype: String
    package var shape: [Int]
    package var nested_blocksize: Int?
    package var nested_dtype: String?
    package var nested_offset: Double?
}

extension Checkpoint {
    /// Whether `name` is stored 4-bit in bitsandbytes' format (a pre-quantized checkpoint).
    package func isBnb4bit(_ name: String) -> Bool { contains(name + ".quant_state.bitsandbytes__nf4") }

    /// A linear weight [rows, cols]: NF4 when the file holds it so or `quantize` asks for
    /// it (quantized from a temporary fp32 copy that is dropped at once), fp32 otherwise.
    /// A GGUF weight in a block format (Q4_K, Q8_0, …) stays in it unless NF4 is asked for.
    /// With `base` bf16 (never together with `quantize`) the rest is held in bf16.
    public func linear(_ name: String, rows: Int, cols: Int, quantize: QuantizationSpec?, base: BaseDType = .fp32) throws -> Matrix {
        if quantize == nil, let g = gguf, let w = try g.blockWeight(name, rows: rows, cols: cols) { return Matrix(ggml: w) }
        if isBnb4bit(name) { return Matrix(nf4: try readBnb4bit(name, rows: rows, cols: cols)) }
        if quantize == nil, base.isBF16 { return try bf16Matrix(name, rows: rows, cols: cols) }
        guard let q = quantize else { return try matrix(name, rows: rows, cols: cols) }
        return Matrix(nf4: try withTemporaryFloats(name, shape: [rows, cols]) {
            NF4Weight.quantize($0, rows: rows, cols: cols, doubleQuant: q.doubleQuant)
        })
    }

    /// Reads a bitsandbytes 4-bit weight: packed codes, absmax (8-bit with nested absmax,
    /// map and offset when double-quantized, else fp32) and the JSON quant state.
    package func readBnb4bit(_ name: String, rows: Int, cols: Int) throws -> NF4Weight {
        try readBnb4bit(name, shape: [rows, cols])
    }

    /// Checks a bitsandbytes 4-bit weight against `shape` from its tensor table and its small
    /// JSON quant state alone (no packed data or scales read): NF4 in blocks of 64, the state's
    /// shape, the packed U8 data of (n + 1) / 2 bytes, and 8-bit absmax codes with their nested
    /// absmax and map (double quantization) or one float absmax per block. Loading checks this
    /// before reading; merge checks it for every 4-bit weight it copies (Merger.checkBase).
    @discardableResult
    package func checkBnb4bit(_ name: String, shape: [Int]) throws -> BnbQuantState {
        let cols = shape.last ?? 1, rows = shape.dropLast().reduce(1, *)
        let file = path(of: name)
        func need(_ n: String) throws -> TensorInfo {
            guard let info = info(n) else { throw MoETuneError.file(path: file, message: "tensor \(Printable.quoted(n)) of the 4-bit weight \(name) is missing") }
            return info
        }
        let stateName = name + ".quant_state.bitsandbytes__nf4"
        let stateInfo = try need(stateName)
        // The state is a few hundred bytes of JSON; a larger one is not bitsandbytes'.
        guard stateInfo.byteCount <= 1 << 16,
              let bytes = storedBytes(stateName), let state = try? JSONDecoder().decode(BnbQuantState.self, from: bytes) else {
            throw MoETuneError.file(path: file, message: "\(name): unreadable bitsandbytes quant state")
        }
        guard state.quant_type == "nf4" else {
            throw MoETuneError.file(path: file, message: "\(name): quant_type \(state.quant_type) is not supported (only nf4)")
        }
        guard state.blocksize == NF4Weight.blockSize else {
            throw MoETuneError.file(path: file, message: "\(name): block size \(state.blocksize) is not supported (only 64)")
        }
        guard state.shape == shape else {
            throw MoETuneError.file(path: file, message: "\(name): 4-bit weight of shape \(state.shape), expected \(shape) from config.json")
        }
        let n = rows * cols, nblocks = (n + 63) / 64
        let pInfo = try need(name)
        guard pInfo.dtype == .u8, pInfo.byteCount == (n + 1) / 2 else {
            throw MoETuneError.file(path: file, message: "\(name): packed 4-bit data of \(pInfo.byteCount) bytes, expected \((n + 1) / 2)")
        }
        let aInfo = try need(name + ".absmax")
        let floatTypes: [DType] = [.f32, .f16, .bf16, .f64]
        if state.nested_offset != nil {
            guard aInfo.dtype == .u8, aInfo.count == nblocks else {
                throw MoETuneError.file(path: file, message: "\(name).absmax: expected \(nblocks) 8-bit scales")
            }
            let nested = try need(name + ".nested_absmax"), map = try need(name + ".nested_quant_map")
            guard floatTypes.contains(nested.dtype), floatTypes.contains(map.dtype), map.count == 256,
                  nested.count == (nblocks + 255) / 256, state.nested_blocksize ?? 256 == 256 else {
                throw MoETuneError.file(path: file, message: "\(name): nested absmax or map has the wrong size")
            }
        } else {
            guard floatTypes.contains(aInfo.dtype), aInfo.count == nblocks else {
                throw MoETuneError.file(path: file, message: "\(name).absmax: \(aInfo.count) scales, expected \(nblocks)")
            }
        }
        return state
    }

    /// A 4-bit tensor of any shape (the fused experts [E, 2*I, H] of `moe-tune quantize`)
    /// as one NF4Weight of rows = all but the last dimension, cols = the last; checked first
    /// (checkBnb4bit).
    package func readBnb4bit(_ name: String, shape: [Int]) throws -> NF4Weight {
        let state = try checkBnb4bit(name, shape: shape)
        let cols = shape.last ?? 1, rows = shape.dropLast().reduce(1, *)
        let n = rows * cols, nblocks = (n + 63) / 64
        func raw(_ n: String) throws -> Data {
            guard let d = storedBytes(n) else { throw MoETuneError.file(path: path(of: name), message: "tensor \(Printable.quoted(n)) of the 4-bit weight \(name) is missing") }
            return d
        }
        let packedBytes = try raw(name)
        let packed = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, (n + 1) / 2))
        packedBytes.withUnsafeBytes { packed.update(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: (n + 1) / 2) }
        if let offset = state.nested_offset {
            let absBytes = try raw(name + ".absmax")
            let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, nblocks))
            absBytes.withUnsafeBytes { codes.update(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: nblocks) }
            let nested = try floatsCopy(name + ".nested_absmax")
            let map = try floatsCopy(name + ".nested_quant_map")
            return NF4Weight(rows: rows, cols: cols, packed: packed, absmax: nil, absmaxCodes: codes,
                             nestedAbsmax: nested, nestedMap: map, offset: Float(offset))
        }
        let absmax = try floatsCopy(name + ".absmax")
        let a = UnsafeMutablePointer<Float>.allocate(capacity: max(1, nblocks))
        a.update(from: absmax, count: nblocks)
        return NF4Weight(rows: rows, cols: cols, packed: packed, absmax: a, absmaxCodes: nil, nestedAbsmax: [], nestedMap: [], offset: 0)
    }

    package func floatsCopy(_ n: String) throws -> [Float] {
        guard let info = info(n) else { throw MoETuneError.file(path: directory, message: "tensor \(Printable.quoted(n)) is missing") }
        var out = [Float](repeating: 0, count: info.count)
        guard let bytes = storedBytes(n) else { throw MoETuneError.file(path: directory, message: "tensor \(Printable.quoted(n)) is missing") }
        let ok = bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { FloatConversion.toFloat(src.baseAddress!, dtype: info.dtype, count: info.count, into: $0.baseAddress!) }
        }
        guard ok else { throw MoETuneError.file(path: path(of: n), message: "tensor \(Printable.quoted(n)) is not a float tensor") }
        return out
    }
}

extension SafeTensorsFile {
    /// A copy of a tensor's bytes that outlives this object (and is freed with its last use).
    package func bytesCopy(_ info: TensorInfo) -> Data {
        Data(bytes(of: info))
    }
}
