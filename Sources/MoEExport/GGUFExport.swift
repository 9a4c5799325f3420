import Foundation
import MoEFormats
import MoEText
import MoECore

/// Writes models and adapters for llama.cpp, Ollama and LM Studio:
/// - `mergedModel`: the base with LoRA adapters folded in (W += Σ w_i s_i B_i A_i), as a
///   GGUF of the family's llama.cpp architecture, 2-D weights in the chosen type (1-D
///   norms F32; a row length the type's block does not divide falls back to F16),
///   llama.cpp's q/k row permutation applied where the architecture has it, each expert's
///   weight stacked into the layer's 3-D ffn_*_exps tensor, `rope_freqs.weight` for Llama 3.1
///   scaling, and the base's tokenizer and chat template metadata (`tokenizer.*`, copied
///   from a GGUF base, converted from a folder's tokenizer.json as llama.cpp's
///   convert_hf_to_gguf.py does: Merge/GGUFVocabulary);
/// - `loraAdapter`: a PEFT adapter in llama.cpp's GGUF LoRA format (convert_lora_to_gguf.py,
///   llama-adapter.cpp): general.type "adapter", adapter.type "lora", adapter.lora.alpha,
///   tensors "<base tensor>.lora_a" = A [r, in] and ".lora_b" = B [out, r] (B's rows
///   permuted like the base's q/k), which llama.cpp scales by alpha / r; plus an Ollama
///   Modelfile beside it (FROM the base, ADAPTER the file).
/// Files are written to a temporary name and renamed into place (AtomicFile).
public enum GGUFExport {
    public struct Summary: Sendable {
        public var tensors: Int
        public var mergedModules: Int
        public var bytes: Int
    }

    /// The output file rules (OutputFolder.checkFile): a .gguf name, never one of the inputs
    /// nor inside one, never in a folder a running moe-tune holds, and an existing file
    /// replaced only with `overwrite` and only when it is a GGUF moe-tune wrote.
    package static func checkOutput(_ out: String, inputs: [String], overwrite: Bool) throws {
        guard out.lowercased().hasSuffix(".gguf") else { throw MoETuneError.file(path: out, message: "the output must be a .gguf file name") }
        try OutputFolder.checkFile(out, inputs: inputs, overwrite: overwrite,
                                   what: "not a GGUF file with moe-tune's \(GGUFFile.writerKey) key", isOwn: GGUFFile.isMoETuneOutput)
    }

    /// The Modelfile export-lora writes beside the adapter: recognised by its first lines.
    package static func isOwnModelfile(_ path: String) -> Bool {
        guard let d = FileManager.default.contents(atPath: path), d.count < 65536 else { return false }
        let lines = String(decoding: d, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        return lines.count == 4 && lines[0].hasPrefix("# Ollama: ollama create NAME -f ") && lines[1].hasPrefix("FROM ")
            && lines[2].hasPrefix("ADAPTER ./") && lines[3].isEmpty
    }

    /// The family of a model GGUF output can hold: one with a llama.cpp architecture and
    /// without an o_proj bias (no architecture moe-tune writes has attn_output.bias).
    package static func family(_ c: ModelConfig, _ model: String) throws -> ModelFamily {
        guard c.family.ggufArchitecture != nil else {
            throw MoETuneError.file(path: model, message: "GGUF output supports \(ModelFamily.supportedGGUFArchitectures.joined(separator: ", ")) models; this is \(c.family.name)")
        }
        if c.oBias {
            throw MoETuneError.file(path: model, message: "o_proj biases (attention_out_bias) cannot be written to a GGUF \(c.family.ggufArchitecture!) model (llama.cpp loads no attn_output.bias for it)")
        }
        return c.family
    }

    /// `tokenizer.*` metadata for the output: copied from a GGUF base, converted from a
    /// model folder's tokenizer.json as llama.cpp's converter does (GGUFVocabulary).
    package static func tokenizerMetadata(_ ck: Checkpoint, model: String, family f: ModelFamily) throws -> [(String, GGUFValue)] {
        guard let g = ck.gguf else {
            return try GGUFVocabulary.metadata(folder: model, vocabSize: ck.config.vocabSize, architecture: f.ggufArchitecture!)
        }
        return g.file.keys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, g.file.metadata[$0]!) }
    }

    /// Rows of x [rows, cols] reordered from Hugging Face order to llama.cpp's (GGUF row
    /// h*D + 2j + s holds HF row h*D + s*D/2 + j).
    package static func permuteRows(_ x: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
        let d = rows / heads, half = d / 2
        var out = x
        for g in 0..<rows {
            let h = g / d, w = g % d, j = w / 2, s = w % 2
            let r = h * d + s * half + j
            for c in 0..<cols { out[g * cols + c] = x[r * cols + c] }
        }
        return out
    }

    /// llama.cpp's general.file_type of an output type.
    package static func fileType(_ t: GGMLType) -> UInt32 {
        switch t { case .f32: 0; case .f16: 1; case .q4_0: 2; case .q8_0: 7; case .bf16: 32; default: 0 }
    }

    public static func mergedModel(model modelPath: String, adapters: [(path: String, weight: Float)], out: String,
                                   type: GGMLType, overwrite: Bool, name: String? = nil, writer: String = "merge") throws -> Summary {
        guard GGMLQuantize.writable.contains(type) else {
            throw MoETuneError.invalid("--gguf-type must be one of f32, f16, bf16, q8_0, q4_0")
        }
        try checkOutput(out, inputs: [modelPath] + adapters.map(\.path), overwrite: overwrite)
        // Streams like Merger: the model is never loaded; the adapters are laid out against
        // the config's module shapes, the tensor infos planned from the tensor table, then
        // each tensor read, merged, checked, encoded and written after the header.
        let ck = try Checkpoint(directory: modelPath)
        var c = ck.config
        let f = try family(c, modelPath)
        try Merger.checkBase(ck)
        let shapes = ModuleShapes(config: ck.config)
        let sets = try adapters.map { (set: try PEFTAdapter.load(directory: $0.path, shapes: shapes), weight: $0.weight) }
        // No adapter: a conversion of the base (to another type, or from a folder).
        // The adapters' A and B point into their AdapterSet: it must outlive every use.
        let mixed = sets.isEmpty ? nil : try AdapterSet.mix(sets, shapes: shapes)
        defer { withExtendedLifetime((sets, mixed)) {} }
        let all = mixed?.all ?? []
        let byModule = Dictionary(uniqueKeysWithValues: all.map { ($0.module, $0) })
        // A head adapter on a model with tied embeddings needs its own output.weight.
        let untie = c.tieWordEmbeddings && byModule[f.module(.head, layer: 0)] != nil
        if untie { c.tieWordEmbeddings = false }

        let w = try header(c, f, ck, modelPath: modelPath, name: name, merging: !adapters.isEmpty, type: type, writer: writer)
        let (layouts, plan, factors) = try tensorPlan(c, f, ck, modelPath: modelPath, untie: untie, type: type)
        let stream = try GGUFStreamWriter(path: out, metadata: w.metadata, tensors: layouts, alignment: w.alignment)
        var merged = 0
        for (layout, parts) in zip(layouts, plan) {
            if parts.isEmpty, let factors {
                try factors.withUnsafeBufferPointer { p in
                    try GGMLQuantize.run(.f32, p.baseAddress!, count: p.count).withUnsafeBytes { try stream.write(layout.name, bytes: $0) }
                }
                continue
            }
            // One tensor, or each expert's matrix at its place in the stacked tensor.
            var stacked = parts.count == 1 ? [] : [Float](repeating: 0, count: layout.shape.reduce(1, *))
            for part in parts {
                let (values, didMerge) = try mergedValues(part, ck, byModule: byModule, modelPath: modelPath)
                if didMerge { merged += 1 }
                guard parts.count > 1 else { stacked = values; continue }
                try stack(values, part, into: &stacked, of: layout.name, parts: parts.count, stream, modelPath: modelPath)
            }
            try stacked.withUnsafeBufferPointer { p in
                if let i = GGMLQuantize.firstOverflow(layout.type, p.baseAddress!, count: p.count) {
                    stream.abort()
                    throw MoETuneError.file(path: modelPath, message: "\(layout.name): element \(i) is \(p[i]), too large for \(layout.type.name) (its f16 \(layout.type == .f16 ? "value" : "block scale") would be infinite); choose --gguf-type bf16 or f32")
                }
                try GGMLQuantize.run(layout.type, p.baseAddress!, count: p.count).withUnsafeBytes { try stream.write(layout.name, bytes: $0) }
            }
        }
        guard merged == all.count else {
            stream.abort()
            throw MoETuneError.invalid("the adapters hold \(all.count) modules but \(merged) map onto \(f.ggufArchitecture!) tensors")
        }
        try stream.finish()
        return Summary(tensors: layouts.count, mergedModules: merged, bytes: stream.totalBytes)
    }

    /// Writes `values`, expert x's matrix [rows, cols] (`part`), at its place in `stacked`, the
    /// tensor `name` [E, rows, cols] stacked from `parts` parts. tensorPlan gives each part of a
    /// stacked tensor its expert: a part without one is refused (the output aborted), never
    /// taken for the whole tensor.
    static func stack(_ values: [Float], _ part: Part, into stacked: inout [Float], of name: String, parts: Int,
                      _ stream: GGUFStreamWriter, modelPath: String) throws {
        guard let x = part.name.expert else {
            stream.abort()
            throw MoETuneError.file(path: modelPath, message: "\(name): stacked from \(parts) tensors, but \(Printable.quoted(part.source)) has no expert index")
        }
        let s = ExpertLayout.stackedSlice(expert: x, rows: part.shape[0], cols: part.shape[1])
        stacked.withUnsafeMutableBufferPointer { s.write(values, into: $0.baseAddress!) }
    }

    /// The output's metadata: the family's hyper-parameters, name, writer, file type, and the
    /// base's tokenizer and chat template.
    static func header(_ c: ModelConfig, _ f: ModelFamily, _ ck: Checkpoint, modelPath: String, name: String?, merging: Bool,
                       type: GGMLType, writer: String) throws -> GGUFWriter {
        var w = GGUFWriter()
        for (k, v) in f.ggufMetadata(c) { w.set(k, v) }
        w.set("general.type", .string("model"))
        w.set(GGUFFile.writerKey, .string(writer))
        w.set("general.name", .string(name ?? ((modelPath as NSString).lastPathComponent as NSString).deletingPathExtension + (merging ? "-merged" : "")))
        w.set("general.file_type", .uint32(fileType(type)))
        if type.blockSize > 1 { w.set("general.quantization_version", .uint32(2)) }
        for (k, v) in try tokenizerMetadata(ck, model: modelPath, family: f) { w.set(k, v) }
        return w
    }

    /// One checkpoint tensor that goes into an output tensor.
    typealias Part = (name: GGUFTensorName, source: String, shape: [Int])

    /// The plan: each output tensor's layout and the checkpoint tensors it is made of (an
    /// expert's weight goes into its slice of the layer's 3-D ffn_*_exps tensor); RoPE
    /// frequency factors first, with no parts. 1-D tensors stay f32, rows that are not whole
    /// blocks of `type` become f16.
    static func tensorPlan(_ c: ModelConfig, _ f: ModelFamily, _ ck: Checkpoint, modelPath: String, untie: Bool,
                           type: GGMLType) throws -> ([GGUFWriter.Layout], [[Part]], [Float]?) {
        var layouts: [GGUFWriter.Layout] = []
        var plan: [[Part]] = []
        let factors = f.ggufRopeFrequencyFactors(c)
        if let factors {
            layouts.append(.init(name: "rope_freqs.weight", type: .f32, shape: [factors.count], byteCount: GGMLType.f32.bytes(count: factors.count)))
            plan.append([])
        }
        if c.slidingWindow != nil {
            throw MoETuneError.file(path: modelPath, message: "sliding-window attention cannot be written to a GGUF \(f.ggufArchitecture!) model (llama.cpp would attend to every position)")
        }
        var group: [Part] = []
        for n in f.ggufTensorNames(c) {
            let source = (untie && n.hf == f.lmHead) ? f.embedTokens : n.hf
            guard let info = ck.info(source) else { throw MoETuneError.file(path: modelPath, message: "tensor \(Printable.quoted(source)) not found") }
            let shape = info.shape
            var outShape = shape
            if let e = n.expert {
                if e == 0 { group = [] }
                group.append((n, source, shape))
                guard e == c.numExperts - 1 else { continue }
                outShape = ExpertLayout.stackedShape(experts: c.numExperts, matrix: shape)
            } else {
                group = [(n, source, shape)]
            }
            let t: GGMLType = shape.count == 1 ? .f32 : (shape.last! % type.blockSize == 0 ? type : .f16)
            layouts.append(.init(name: n.gguf, type: t, shape: outShape, byteCount: t.bytes(count: outShape.reduce(1, *))))
            plan.append(group)
        }
        return (layouts, plan, factors)
    }

    /// One checkpoint tensor's values with its adapter's delta added (B A times the scale,
    /// when the mix has one for it: `merged`), checked finite, rows permuted as llama.cpp keeps them.
    static func mergedValues(_ part: Part, _ ck: Checkpoint, byModule: [String: LoRAAdapter],
                             modelPath: String) throws -> (values: [Float], merged: Bool) {
        let (n, source, shape) = part
        var values = try ck.withTemporaryFloats(source, shape: shape) { Array(UnsafeBufferPointer(start: $0, count: shape.reduce(1, *))) }
        var merged = false
        if n.hf.hasSuffix(".weight"), let a = byModule[String(n.hf.dropLast(".weight".count))] {
            guard shape == [a.outFeatures, a.inFeatures] else {
                throw MoETuneError.file(path: ck.path(of: source), message: "tensor \(Printable.quoted(source)) has shape \(shape), expected \([a.outFeatures, a.inFeatures]) from config.json")
            }
            values.withUnsafeMutableBufferPointer { buf in
                BLAS.gemm(.none, .none, m: a.outFeatures, n: a.inFeatures, k: a.rank, alpha: a.scale,
                          a: a.b, lda: a.rank, b: a.a, ldb: a.inFeatures, beta: 1, c: buf.baseAddress!, ldc: a.inFeatures)
            }
            merged = true
        }
        if let i = values.firstIndex(where: { !$0.isFinite }) {
            throw MoETuneError.file(path: modelPath, message: "merging gives a non-finite weight in \(n.hf) (element \(i) is \(values[i])); check the adapters and the base for NaN/inf values")
        }
        if let heads = n.permuteHeads { values = permuteRows(values, rows: shape[0], cols: shape[1], heads: heads) }
        return (values, merged)
    }

    public struct LoRASummary: Sendable {
        public var tensors: Int
        public var alpha: Float
        public var modelfile: String
    }

    public static func loraAdapter(model modelPath: String, adapter adapterPath: String, out: String, overwrite: Bool) throws -> LoRASummary {
        try checkOutput(out, inputs: [modelPath, adapterPath], overwrite: overwrite)
        let modelfile = ((out as NSString).deletingLastPathComponent.isEmpty ? "." : (out as NSString).deletingLastPathComponent) + "/Modelfile"
        try OutputFolder.checkFile(modelfile, inputs: [modelPath, adapterPath], overwrite: overwrite,
                                   what: "not the Modelfile export-lora writes", isOwn: isOwnModelfile)
        let ck = try Checkpoint(directory: modelPath)
        let c = ck.config
        let f = try family(c, modelPath)
        let model = try Transformer(checkpoint: ck)
        let set = try PEFTAdapter.load(directory: adapterPath, model: model)
        defer { withExtendedLifetime(set) {} }   // A and B point into it
        guard set.routers.allSatisfy({ $0 == nil }) else {
            throw MoETuneError.file(path: adapterPath, message: "a fully trained router cannot be written as a GGUF LoRA")
        }
        let names = Dictionary(uniqueKeysWithValues: f.ggufTensorNames(c).map { ($0.hf, $0) })
        // llama.cpp scales every adapter by alpha / r: write the PEFT alpha when that
        // gives each module its scale (alpha / sqrt(r) with rsLoRA: alpha * sqrt(r)), else
        // alpha 1 with each module's scale * r folded into B.
        let alphas = set.all.map { $0.scale * Float($0.rank) }
        let uniform = alphas.allSatisfy { abs($0 - alphas[0]) <= 1e-6 * abs(alphas[0]) }
        let alpha: Float = uniform ? (alphas.first ?? 1) : 1
        var w = GGUFWriter()
        w.set("general.architecture", .string(f.ggufArchitecture!))
        w.set("general.type", .string("adapter"))
        w.set(GGUFFile.writerKey, .string("export-lora"))
        w.set("general.name", .string((adapterPath as NSString).lastPathComponent))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(alpha))
        for a in set.all {
            guard let n = names[a.module + ".weight"] else {
                throw MoETuneError.file(path: adapterPath, message: "module \(Printable.quoted(a.module)) has no tensor in a GGUF \(f.ggufArchitecture!) model (tied lm_head adapters and experts are not supported)")
            }
            guard n.expert == nil else {
                throw MoETuneError.file(path: adapterPath, message: "module \(Printable.quoted(a.module)) is an expert: a GGUF LoRA cannot hold one expert's adapter (merge it with `merge --format gguf` instead)")
            }
            var bvals = Array(UnsafeBufferPointer(start: a.b, count: a.outFeatures * a.rank))
            if !uniform {
                let k = a.scale * Float(a.rank)
                for i in bvals.indices { bvals[i] *= k }
            }
            if let heads = n.permuteHeads { bvals = permuteRows(bvals, rows: a.outFeatures, cols: a.rank, heads: heads) }
            w.add(n.gguf + ".lora_a", shape: [a.rank, a.inFeatures], floats: a.a, as: .f32)
            bvals.withUnsafeBufferPointer { w.add(n.gguf + ".lora_b", shape: [a.outFeatures, a.rank], floats: $0.baseAddress!, as: .f32) }
        }
        try AtomicFile.write(w.serialized(), to: out)
        let text = "# Ollama: ollama create NAME -f \((modelfile as NSString).lastPathComponent)\nFROM \(OutputFolder.canonical(modelPath))\nADAPTER ./\((out as NSString).lastPathComponent)\n"
        try AtomicFile.write(Data(text.utf8), to: modelfile)
        return LoRASummary(tensors: w.tensors.count, alpha: alpha, modelfile: modelfile)
    }
}
