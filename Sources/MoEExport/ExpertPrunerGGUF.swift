import Foundation
import MoEFormats
import MoEText
import MoECore

extension ExpertPruner {
    /// A GGUF at `out`: from a GGUF model, its tensors copied in their own types with the
    /// router rows and the stacked experts of the dropped ones removed and the expert count
    /// (and with `topK` the experts used) rewritten in the metadata; from a Hugging Face
    /// folder, the pruned folder written beside `out` (a temporary) and converted to `type`.
    public static func pruneGGUF(model: String, kept: [Int: [Int]], topK: Int?, out: String, overwrite: Bool,
                                 type: GGMLType) throws -> Summary {
        try GGUFExport.checkOutput(out, inputs: [model], overwrite: overwrite)
        let ck = try Checkpoint(directory: model)
        guard let g = ck.gguf?.file else {
            let c = ck.config
            let (n, k) = try check(c, kept: kept, topK: topK, path: model)
            // The tokenizer must convert (a byte-level BPE tokenizer.json) before anything is written.
            _ = try GGUFExport.tokenizerMetadata(ck, model: model, family: try GGUFExport.family(c, model))
            let base = ((out as NSString).lastPathComponent as NSString).deletingPathExtension
            let temp = AtomicFile.temporaryPath(for: ((out as NSString).deletingLastPathComponent as NSString).appendingPathComponent(base))
            let fm = FileManager.default
            try? fm.removeItem(atPath: temp)
            do { try fm.createDirectory(atPath: temp, withIntermediateDirectories: true) } catch {
                throw MoETuneError.file(path: temp, message: "cannot create a temporary folder: \(error.localizedDescription)")
            }
            defer { try? fm.removeItem(atPath: temp) }
            _ = try writeFolder(ck, model: model, kept: kept, topK: topK, into: temp, maxShardBytes: Int.max)
            let s = try GGUFExport.mergedModel(model: temp, adapters: [], out: out, type: type, overwrite: overwrite,
                                               name: base, writer: "prune")
            return Summary(tensors: s.tensors, bytes: s.bytes, experts: n, topK: k)
        }
        let c = ck.config, f = c.family
        let (n, k) = try check(c, kept: kept, topK: topK, path: model)
        // The GGUF tensors of each routed layer's router and stacked experts.
        let ggufName = Dictionary(f.ggufTensorNames(c).map { ($0.hf, $0.gguf) }, uniquingKeysWith: { a, _ in a })
        var sliced: [String: Int] = [:]
        for l in kept.keys {
            for hf in [f.weight(.router, layer: l)] + FeedForwardPart.allCases.map({ f.weight(.expert(0, $0), layer: l) }) {
                guard let name = ggufName[hf] else { throw MoETuneError.file(path: model, message: "no GGUF tensor for \(hf)") }
                sliced[name] = l
            }
        }
        var metadata: [(String, GGUFValue)] = []
        for key in g.keys where key != GGUFFile.writerKey {
            switch key {
            case f.ggufExpertCountKey: metadata.append((key, .uint32(UInt32(n))))
            case f.ggufExpertUsedCountKey: metadata.append((key, .uint32(UInt32(k))))
            default: metadata.append((key, g.metadata[key]!))
            }
        }
        metadata.append((GGUFFile.writerKey, .string("prune")))
        let layouts = g.tensors.map { t -> GGUFWriter.Layout in
            guard sliced[t.name] != nil else { return .init(name: t.name, type: t.type, shape: t.shape, byteCount: t.byteCount) }
            return .init(name: t.name, type: t.type, shape: [n] + t.shape.dropFirst(), byteCount: t.byteCount / t.shape[0] * n)
        }
        let stream = try GGUFStreamWriter(path: out, metadata: metadata, tensors: layouts, alignment: g.alignment)
        for t in g.tensors {
            let raw = UnsafeRawBufferPointer(start: g.bytes(of: t), count: t.byteCount)
            if let l = sliced[t.name] {
                guard t.shape[0] == c.numExperts else {
                    stream.abort()
                    throw MoETuneError.file(path: model, message: "tensor \(Printable.quoted(t.name)) has shape \(t.shape); expected \(c.numExperts) experts first")
                }
                try selectRows(raw, rows: kept[l]!, of: t.shape[0]).withUnsafeBytes { try stream.write(t.name, bytes: $0) }
            } else {
                try stream.write(t.name, bytes: raw)
            }
            g.release(t)
        }
        try stream.finish()
        return Summary(tensors: layouts.count, bytes: stream.totalBytes, experts: n, topK: k)
    }
}
