import Foundation
import MoEFormats
import MoEText

/// A GGUF model file opened as a checkpoint: the configuration from its metadata, and each
/// Hugging Face tensor name of the family mapped onto its GGUF tensor (Families/GGUFLayout.swift),
/// with llama.cpp's q/k row permutation undone on the way out and an expert's weight read
/// as its slice of the layer's 3-D ffn_*_exps tensor. Tensors the family does not know are
/// refused, naming them, so that nothing is silently ignored.
package final class GGUFModelFile: @unchecked Sendable {
    package let file: GGUFFile
    package let config: ModelConfig
    private struct Entry {
        let info: GGUFTensorInfo
        let permuteHeads: Int?
        let expert: Int?
        /// The Hugging Face shape: the GGUF shape, less the expert dimension of a slice
        /// (ExpertLayout.stacked).
        var shape: [Int] { expert == nil ? info.shape : ExpertLayout.stackedMatrixShape(info.shape) }
    }
    private let byHF: [String: Entry]


    package init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MoETuneError.file(path: path, message: "GGUF model file not found")
        }
        guard !isDir.boolValue else { throw MoETuneError.file(path: path, message: "is a folder, not a GGUF file") }
        file = try GGUFFile(path: path)
        config = try ModelFamily.config(gguf: file)
        var map: [String: Entry] = [:]
        var used = Set<String>()
        if case .frequencyFactors? = config.ropeScaling { used.insert("rope_freqs.weight") }
        for n in config.family.ggufTensorNames(config) {
            guard let t = file.tensor(n.gguf) else {
                throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(n.gguf)) (\(n.hf)) is missing")
            }
            if n.expert != nil {
                guard ExpertLayout.isStacked(t.shape, experts: config.numExperts) else {
                    throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(n.gguf)) has shape \(t.shape), expected [\(config.numExperts), rows, cols] (one matrix per expert)")
                }
                guard t.dims[0] % t.type.blockSize == 0 else {
                    throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(n.gguf)): row length \(t.dims[0]) is not a multiple of the \(t.type.name) block")
                }
            }
            map[n.hf] = Entry(info: t, permuteHeads: n.permuteHeads, expert: n.expert)
            used.insert(n.gguf)
        }
        if let extra = file.tensors.first(where: { !used.contains($0.name) }) {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(extra.name)) is not part of a \(config.family.ggufArchitecture ?? config.family.name) model of \(config.numLayers) layers (not supported)")
        }
        byHF = map
    }

    package var tensorNames: [String] { Array(byHF.keys) }
    package func contains(_ name: String) -> Bool { byHF[name] != nil }
    /// The GGUF tensor behind Hugging Face tensor `name`.
    package func tensor(_ name: String) -> GGUFTensorInfo? { byHF[name]?.info }
    /// The Hugging Face shape of tensor `name` (an expert's [rows, cols]).
    package func shape(_ name: String) -> [Int]? { byHF[name]?.shape }

    /// Whether the rows of tensor `name` are stored permuted (llama.cpp's q/k order), so
    /// that Hugging Face row r is not file row r.
    private func isPermuted(_ name: String, rows: Int) -> Bool {
        guard let heads = byHF[name]?.permuteHeads, heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else { return false }
        return true
    }

    /// Source row of Hugging Face row r of tensor `name`.
    private func sourceRow(_ name: String, rows: Int) -> (Int) -> Int {
        guard isPermuted(name, rows: rows), let heads = byHF[name]?.permuteHeads else { return { $0 } }
        let d = rows / heads, half = d / 2
        return { r in
            let h = r / d, w = r % d
            return h * d + 2 * (w % half) + w / half
        }
    }

    /// The entry of `name` checked against `shape`, and the address of its first row.
    private func checked(_ name: String, shape: [Int]) throws -> (Entry, UnsafeRawPointer) {
        guard let e = byHF[name] else {
            throw MoETuneError.file(path: file.path, message: "tensor for \(Printable.quoted(name)) not found in the GGUF file")
        }
        guard e.shape == shape else {
            throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(e.info.name)) has \(e.expert.map { "per-expert shape \(e.shape) (expert \($0))" } ?? "shape \(e.shape)"), expected \(shape) from the GGUF metadata")
        }
        let t = e.info, cols = t.dims[0], rows = shape.count > 1 ? shape.dropLast().reduce(1, *) : 1
        let offset = ExpertLayout.stackedByteOffset(expert: e.expert ?? 0, rows: rows, rowBytes: t.type.bytes(count: cols))
        return (e, file.bytes(of: t) + offset)
    }

    /// Tensor `name` [shape] dequantized to fp32 into dst, in Hugging Face row order.
    package func dequantize(_ name: String, shape: [Int], into dst: UnsafeMutablePointer<Float>) throws {
        let (e, base) = try checked(name, shape: shape)
        let t = e.info, cols = t.dims[0], rows = shape.reduce(1, *) / max(cols, 1)
        let src = sourceRow(name, rows: rows), rowBytes = t.type.bytes(count: cols)
        parallelChunks(rows, minChunk: max(1, 16384 / max(cols, 1))) { range in
            for r in range { GGMLDequantize.run(t.type, base + src(r) * rowBytes, count: cols, into: dst + r * cols) }
        }
        file.release(t)
    }

    /// A weight [rows, cols] the file stores as BF16, taken as it is (`base_dtype: bf16`);
    /// nil for any other type.
    package func bf16Weight(_ name: String, rows: Int, cols: Int) throws -> BF16Weight? {
        let (e, base) = try checked(name, shape: [rows, cols])
        guard e.info.type == .bf16 else { return nil }
        defer { file.release(e.info) }
        return BF16Weight(stored: base, rows: rows, cols: cols, sourceRow: sourceRow(name, rows: rows))
    }

    /// A weight [rows, cols] kept in its ggml block format, or nil when the file stores it
    /// as F32/F16/BF16 (read as fp32 instead). Rows in the file's order are used where they
    /// are, in the file's mapping (kept alive by the weight); permuted rows are copied.
    package func blockWeight(_ name: String, rows: Int, cols: Int) throws -> GGMLWeight? {
        let (e, base) = try checked(name, shape: [rows, cols])
        guard e.info.type.blockSize > 1 else { return nil }
        if !isPermuted(name, rows: rows) {
            return GGMLWeight(type: e.info.type, rows: rows, cols: cols, mapped: base, owner: file.mapping)
        }
        defer { file.release(e.info) }
        return GGMLWeight(type: e.info.type, rows: rows, cols: cols, src: base, sourceRow: sourceRow(name, rows: rows))
    }
}
