import Foundation
import MoEFormats
import MoEText
import MoECore

extension Merger {
    /// Where an output tensor's values come from: a float base tensor (merged), GPT-OSS's
    /// MXFP4 expert blocks (dequantized, merged), the embedding (a tied model's own lm_head
    /// with the head adapter merged), or the base's bytes copied as they are (4-bit data).
    package enum Source { case float, mxfp4, tiedHead, raw(TensorInfo) }

    /// One tensor of the output: its name, shape, source and size in the output in bytes.
    package struct PlannedTensor {
        package var name: String
        package var shape: [Int]
        package var source: Source
        package var bytes: Int
    }
}

/// One merge's steps (Merger.merge runs them in order): the base checkpoint's tensor table,
/// the adapters mixed and laid out against config.json's module shapes, the output dtype;
/// it plans the output, merges, checks and writes each tensor, and counts the modules merged.
/// The adapters' A and B point into its adapter sets: keep it alive while they are used.
package final class MergeJob {
    let modelDir: String
    let adapterPaths: [String]
    let ck: Checkpoint
    let config: ModelConfig
    let family: ModelFamily
    /// The adapter sets read from the files; `mixed` is their weighted mix.
    private let sets: [AdapterSet]
    let mixed: AdapterSet
    let byModule: [String: LoRAAdapter]
    /// The output element type (f32, f16 or bf16).
    let dtype: DType
    /// GPT-OSS: MXFP4 expert blocks that an expert adapter changes are written dequantized.
    let dequantizeExperts: Bool
    /// Modules (and trained routers) folded in so far.
    private(set) var merged = 0

    /// Reads the base's tensor table (the files are mapped, not loaded; each base tensor is
    /// read once, when it is written), checks it as loading the model would, and reads and
    /// mixes the adapters. `dtype` nil: the base's.
    package init(modelDir: String, adapters: [(path: String, weight: Float)], dtype: DType?) throws {
        let ck = try Checkpoint(directory: modelDir)
        guard ck.gguf == nil else {
            throw MoETuneError.file(path: modelDir, message: "a GGUF model merges into a GGUF file only (it has no config.json for a Hugging Face folder): pass --format gguf")
        }
        try Merger.checkBase(ck)
        let shapes = ModuleShapes(config: ck.config)
        let sets = try adapters.map { (try PEFTAdapter.load(directory: $0.path, shapes: shapes), $0.weight) }
        let mixed = try AdapterSet.mix(sets.map { (set: $0.0, weight: $0.1) }, shapes: shapes)
        let c = ck.config, f = c.family
        let dtype = dtype ?? ck.info(f.embedTokens)?.dtype ?? .f32
        guard [.f32, .f16, .bf16].contains(dtype) else { throw MoETuneError.invalid("--dtype must be f32, bf16 or f16") }
        self.modelDir = modelDir
        adapterPaths = adapters.map(\.path)
        self.ck = ck
        config = c
        family = f
        self.sets = sets.map(\.0)
        self.mixed = mixed
        self.dtype = dtype
        byModule = Dictionary(uniqueKeysWithValues: mixed.all.map { ($0.module, $0) })
        // GPT-OSS's released checkpoints hold the experts as MXFP4 blocks. With expert adapters,
        // the experts are written dequantized (as transformers loads them on a CPU and peft's
        // merge_and_unload + save_pretrained writes them) in the output dtype, and config.json
        // loses its quantization_config; without, the blocks are copied as they are.
        let expertAdapters = mixed.all.contains { if case .expert? = f.parse(module: $0.module)?.slot { return true }; return false }
        dequantizeExperts = expertAdapters && (0..<c.numLayers).contains { l in
            guard ExpertLayout.isTransposedInterleaved(f),
                  let t = ExpertLayout.transposedInterleaved.tensors(f, layer: l, contains: ck.contains) else { return false }
            return ck.contains(t.gateUp + "_blocks") || ck.contains(t.down + "_blocks")
        }
    }

    // MARK: - The plan

    /// Every output tensor with its shape, its size in the output and where its values come
    /// from, sorted by name (a tied model's lm_head for a head adapter last), and whether
    /// that lm_head unties the head. Nothing is read yet.
    package func plan() throws -> (tensors: [Merger.PlannedTensor], untie: Bool) {
        let c = config, f = family
        // As loading the model does: MXFP4 storage that disagrees with config.json is refused.
        if ck.gguf == nil {
            for l in 0..<c.numLayers where ExpertLayout.isTransposedInterleaved(f) {
                let t = ExpertLayout.transposedInterleaved.tensors(f, layer: l, contains: ck.contains)!
                for name in [t.gateUp, t.down] { try ck.checkMXFP4Storage(name, module: f.fusedExperts(l)) }
            }
        }
        var entries = try plannedBaseTensors()
        entries.sort { $0.name < $1.name }
        try refuseAdapted4Bit(entries)
        // A head adapter on a model with tied embeddings needs its own lm_head.
        var untie = false
        if byModule[f.module(.head, layer: 0)] != nil, !ck.contains(f.lmHead) {
            entries.append(.init(name: f.lmHead, shape: [c.vocabSize, c.hiddenSize], source: .tiedHead,
                                 bytes: c.vocabSize * c.hiddenSize * dtype.size))
            untie = true
        }
        return (entries, untie)
    }

    /// One planned tensor per tensor of the checkpoint's table, in the table's name order:
    /// float tensors merged into `dtype`, MXFP4 expert blocks (when dequantized) as their
    /// expert tensor, anything else copied.
    func plannedBaseTensors() throws -> [Merger.PlannedTensor] {
        let c = config, f = family
        var entries: [Merger.PlannedTensor] = []
        for name in ck.tensorNames.sorted() {
            let info = ck.info(name)!
            if dequantizeExperts, name.hasSuffix("_blocks") || name.hasSuffix("_scales") {
                let base = String(name.dropLast("_blocks".count))
                guard let (_, gateUp) = f.fusedExpertTensor(base) else {
                    throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(name): MXFP4 blocks of a tensor that is not an expert tensor")
                }
                guard name.hasSuffix("_blocks") else { continue }
                // Only GPT-OSS's transposed experts are stored as MXFP4 blocks.
                let shape = ExpertLayout.transposedInterleaved.shape(gateUp: gateUp, ExpertLayout.Dimensions(c))
                entries.append(.init(name: base, shape: shape, source: .mxfp4, bytes: shape.reduce(1, *) * dtype.size))
            } else if [.f32, .f16, .bf16, .f64].contains(info.dtype) {
                entries.append(.init(name: name, shape: info.shape, source: .float, bytes: info.count * dtype.size))
            } else {
                entries.append(.init(name: name, shape: info.shape, source: .raw(info), bytes: info.byteCount))
            }
        }
        return entries
    }

    /// A weight stored 4-bit (checkBase let it through) is copied as it is: an adapter on it
    /// cannot be folded in (README "moe-tune merge": merge into the full-precision base).
    func refuseAdapted4Bit(_ entries: [Merger.PlannedTensor]) throws {
        let c = config, f = family
        for e in entries {
            guard case .raw(let info) = e.source else { continue }
            let adapted: Bool
            if let (l, gateUp) = f.fusedExpertTensor(e.name) {
                adapted = (0..<c.numExperts).contains { x in
                    ExpertLayout.parts(gateUp: gateUp).contains { byModule[f.module(.expert(x, $0), layer: l)] != nil }
                }
            } else if e.name.hasSuffix(".weight") {
                adapted = byModule[f.canonicalModule(String(e.name.dropLast(".weight".count)))] != nil
            } else {
                adapted = false
            }
            if adapted {
                throw MoETuneError.file(path: ck.path(of: e.name), message: "tensor \(Printable.quoted(e.name)) is stored as \(info.dtype.rawValue) (bitsandbytes 4-bit), and an adapter changes it: merge into the original full-precision checkpoint instead")
            }
        }
    }

    // MARK: - Merging one tensor

    /// The merged fp32 values of base tensor `name` [shape] from its base values at `src`:
    /// each adapter's s B A added where it lands (per expert in a fused expert tensor), or a
    /// trained router's weight in place of the gate. A non-finite result is refused.
    package func mergedValues(_ name: String, shape: [Int], from src: UnsafePointer<Float>) throws -> [Float] {
        let count = shape.reduce(1, *), f = family
        var values = [Float](repeating: 0, count: count)
        values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: src, count: count) }
        if let (l, gateUp) = f.fusedExpertTensor(name) {
            try addExpertDeltas(name, shape: shape, layer: l, gateUp: gateUp, into: &values)
        } else if name.hasSuffix(".weight") {
            let module = f.canonicalModule(String(name.dropLast(".weight".count)))
            if let (l, slot) = f.parse(module: module), slot == .router, l < mixed.routers.count,
               let r = mixed.routers[l] {
                try checkShape(name, shape, [r.experts, r.hidden])
                values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: r.weight, count: r.experts * r.hidden) }
                merged += 1
            } else {
                if let a = byModule[module] { try checkShape(name, shape, [a.outFeatures, a.inFeatures]) }
                addDelta(module, into: &values, at: 0)
            }
        }
        try checkFinite(values, name)
        return values
    }

    /// values[offset...] (`module`'s weight, [out, in] row-major) += s B A of its adapter, if
    /// it has one.
    func addDelta(_ module: String, into values: inout [Float], at offset: Int) {
        guard let a = byModule[module] else { return }
        values.withUnsafeMutableBufferPointer { buf in
            BLAS.gemm(.none, .none, m: a.outFeatures, n: a.inFeatures, k: a.rank, alpha: a.scale,
                      a: a.b, lda: a.rank, b: a.a, ldb: a.inFeatures, beta: 1,
                      c: buf.baseAddress! + offset, ldc: a.inFeatures)
        }
        merged += 1
    }

    /// A fused expert tensor (transformers 5's gate_up [E, 2I, H] / down [E, H, I], or
    /// GPT-OSS's transposed and interleaved [E, H, 2I] / [E, I, H]): each expert's delta
    /// [out, in] = s B A added where ExpertLayout puts its matrix, in place where the slice is
    /// contiguous, else through a temporary delta.
    func addExpertDeltas(_ name: String, shape: [Int], layer l: Int, gateUp: Bool, into values: inout [Float]) throws {
        let c = config, f = family, d = ExpertLayout.Dimensions(c)
        let layout = ExpertLayout.of(f, layer: l, contains: ck.contains)
        try checkShape(name, shape, layout.shape(gateUp: gateUp, d))
        var delta = [Float](repeating: 0, count: d.inter * d.hidden)
        for e in 0..<c.numExperts {
            for part in ExpertLayout.parts(gateUp: gateUp) {
                let s = layout.slice(part, expert: e, d), module = f.module(.expert(e, part), layer: l)
                guard !s.isContiguous else { addDelta(module, into: &values, at: s.offset); continue }
                guard let a = byModule[module] else { continue }
                delta.withUnsafeMutableBufferPointer { dp in
                    BLAS.gemm(.none, .none, m: a.outFeatures, n: a.inFeatures, k: a.rank, alpha: a.scale,
                              a: a.b, lda: a.rank, b: a.a, ldb: a.inFeatures, beta: 0, c: dp.baseAddress!, ldc: a.inFeatures)
                    values.withUnsafeMutableBufferPointer { s.add(dp.baseAddress!, into: $0.baseAddress!) }
                }
                merged += 1
            }
        }
    }

    /// Refuses a base tensor whose shape is not the one config.json gives (a delta of
    /// the adapter's shape would not fit), as loading the model would.
    func checkShape(_ name: String, _ shape: [Int], _ expected: [Int]) throws {
        guard shape == expected else {
            throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has shape \(shape), expected \(expected) from config.json")
        }
    }

    /// A NaN or infinite merged weight would silently break every later use: refuse it.
    func checkFinite(_ values: [Float], _ name: String) throws {
        if let i = values.firstIndex(where: { !$0.isFinite }) {
            throw MoETuneError.file(path: modelDir, message: "merging gives a non-finite weight in \(name) (element \(i) is \(values[i])); check the adapters (\(adapterPaths.joined(separator: ", "))) and the base for NaN/inf values")
        }
    }

    /// A tied model's own lm_head [V, H]: the embedding with the head adapter merged.
    func tiedHeadValues(_ name: String, shape: [Int]) throws -> [Float] {
        let head = byModule[family.module(.head, layer: 0)]!
        var v = try ck.withTemporaryFloats(family.embedTokens, shape: shape) { Array(UnsafeBufferPointer(start: $0, count: shape.reduce(1, *))) }
        v.withUnsafeMutableBufferPointer { buf in
            BLAS.gemm(.none, .none, m: head.outFeatures, n: head.inFeatures, k: head.rank, alpha: head.scale,
                      a: head.b, lda: head.rank, b: head.a, ldb: head.inFeatures, beta: 1, c: buf.baseAddress!, ldc: head.inFeatures)
        }
        merged += 1
        try checkFinite(v, name)
        return v
    }

    // MARK: - Writing

    /// Writes the planned tensors, `shards` (indices into `entries`) one file each, into
    /// `staging`; the file each tensor went to, by name (the index's weight_map).
    package func writeShards(_ entries: [Merger.PlannedTensor], shards: [[Int]], to staging: String) throws -> [String: String] {
        var weightMap: [String: String] = [:]
        for (i, shard) in shards.enumerated() {
            let file = shards.count == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", i + 1, shards.count)
            let byName = Dictionary(uniqueKeysWithValues: shard.map { (entries[$0].name, entries[$0]) })
            let out = try SafeTensorsStreamWriter(path: staging + "/" + file, tensors: shard.map {
                SafeTensorsWriter.Layout(name: entries[$0].name, dtype: outDType(entries[$0].source), shape: entries[$0].shape,
                                         byteCount: entries[$0].bytes)
            })
            for t in out.order { try write(byName[t.name]!, to: out) }
            try out.finish()
            for k in shard { weightMap[entries[k].name] = file }
        }
        return weightMap
    }

    /// A planned tensor's element type in the output: a copied tensor keeps its own.
    func outDType(_ source: Merger.Source) -> DType { if case .raw(let info) = source { info.dtype } else { dtype } }

    /// Reads, merges, checks, encodes and writes one tensor; nothing of it is kept.
    func write(_ e: Merger.PlannedTensor, to out: SafeTensorsStreamWriter) throws {
        let values: [Float]
        switch e.source {
        case .raw(let info):
            // Copied while the file (its mapping) is alive.
            let file = try SafeTensorsFile(path: ck.path(of: e.name))
            try withExtendedLifetime(file) { try out.write(e.name, bytes: file.bytes(of: info)) }
            return
        case .float:
            values = try ck.withTemporaryFloats(e.name, shape: e.shape) { try mergedValues(e.name, shape: e.shape, from: $0) }
        case .mxfp4:
            values = try ck.withTemporaryMXFP4Floats(e.name, shape: e.shape) { try mergedValues(e.name, shape: e.shape, from: $0) }!
        case .tiedHead:
            values = try tiedHeadValues(e.name, shape: e.shape)
        }
        if dtype == .f16, let i = values.withUnsafeBufferPointer({ GGMLQuantize.firstOverflow(.f16, $0.baseAddress!, count: $0.count) }) {
            throw MoETuneError.file(path: modelDir, message: "\(e.name): element \(i) is \(values[i]), beyond f16's range (±65504); merge with --dtype bf16 or f32")
        }
        if dtype == .f32 {
            try values.withUnsafeBytes { try out.write(e.name, bytes: $0) }
        } else {
            try Merger.encode(values, as: dtype).withUnsafeBytes { try out.write(e.name, bytes: $0) }
        }
    }

    /// Every adapter module and trained router was folded in exactly once.
    func checkEveryModuleMerged() throws {
        guard merged == mixed.all.count + mixed.routers.compactMap({ $0 }).count else {
            throw MoETuneError.invalid("internal: merged \(merged) modules but the adapters hold \(mixed.all.count)")
        }
    }
}
