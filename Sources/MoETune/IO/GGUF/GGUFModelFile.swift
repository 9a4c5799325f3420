import Foundation

/// A GGUF model file opened as a checkpoint: the configuration from its metadata, and each
/// Hugging Face tensor name of the family mapped onto its GGUF tensor (Families/GGUFLayout.swift),
/// with llama.cpp's q/k row permutation undone on the way out. Tensors the family does
/// not know are refused, naming them, so that nothing is silently ignored.
final class GGUFModelFile: @unchecked Sendable {
    let file: GGUFFile
    let config: ModelConfig
    private let byHF: [String: (info: GGUFTensorInfo, permuteHeads: Int?)]

    static func isGGUFPath(_ path: String) -> Bool { path.lowercased().hasSuffix(".gguf") }

    init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MoETuneError.file(path: path, message: "GGUF model file not found")
        }
        guard !isDir.boolValue else { throw MoETuneError.file(path: path, message: "is a folder, not a GGUF file") }
        file = try GGUFFile(path: path)
        config = try ModelFamily.config(gguf: file)
        var map: [String: (GGUFTensorInfo, Int?)] = [:]
        var used = Set<String>()
        for n in config.family.ggufTensorNames(config) {
            guard let t = file.tensor(n.gguf) else {
                throw MoETuneError.file(path: path, message: "tensor '\(n.gguf)' (\(n.hf)) is missing")
            }
            map[n.hf] = (t, n.permuteHeads)
            used.insert(n.gguf)
        }
        if let extra = file.tensors.first(where: { !used.contains($0.name) }) {
            throw MoETuneError.file(path: path, message: "tensor '\(extra.name)' is not part of a \(config.family.ggufArchitecture ?? config.family.name) model of \(config.numLayers) layers (not supported)")
        }
        byHF = map
    }

    var tensorNames: [String] { Array(byHF.keys) }
    func contains(_ name: String) -> Bool { byHF[name] != nil }
    func tensor(_ name: String) -> GGUFTensorInfo? { byHF[name]?.info }

    /// Source row of Hugging Face row r of tensor `name`.
    private func sourceRow(_ name: String, rows: Int) -> (Int) -> Int {
        guard let heads = byHF[name]?.permuteHeads, heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else { return { $0 } }
        let d = rows / heads, half = d / 2
        return { r in
            let h = r / d, w = r % d
            return h * d + 2 * (w % half) + w / half
        }
    }

    private func checked(_ name: String, shape: [Int]) throws -> GGUFTensorInfo {
        guard let t = byHF[name]?.info else {
            throw MoETuneError.file(path: file.path, message: "tensor for '\(name)' not found in the GGUF file")
        }
        guard t.shape == shape else {
            throw MoETuneError.file(path: file.path, message: "tensor '\(t.name)' has shape \(t.shape), expected \(shape) from the GGUF metadata")
        }
        return t
    }

    /// Tensor `name` [shape] dequantized to fp32 into dst, in Hugging Face row order.
    func dequantize(_ name: String, shape: [Int], into dst: UnsafeMutablePointer<Float>) throws {
        let t = try checked(name, shape: shape)
        let cols = t.dims[0], rows = t.count / max(cols, 1)
        let src = sourceRow(name, rows: rows), rowBytes = t.type.bytes(count: cols)
        let base = file.bytes(of: t)
        parallelChunks(rows, minChunk: max(1, 16384 / max(cols, 1))) { range in
            for r in range { GGMLDequantize.run(t.type, base + src(r) * rowBytes, count: cols, into: dst + r * cols) }
        }
        file.release(t)
    }

    /// A weight [rows, cols] kept in its ggml block format, or nil when the file stores it
    /// as F32/F16/BF16 (read as fp32 instead).
    func blockWeight(_ name: String, rows: Int, cols: Int) throws -> GGMLWeight? {
        let t = try checked(name, shape: [rows, cols])
        guard t.type.blockSize > 1 else { return nil }
        defer { file.release(t) }
        return GGMLWeight(type: t.type, rows: rows, cols: cols, src: file.bytes(of: t), sourceRow: sourceRow(name, rows: rows))
    }
}
