import Foundation
import MoEFormats
import MoEText
import MoECore

/// Folds LoRA adapters into a copy of the base model: W += sum_i w_i * s_i * B_i A_i for
/// every adapted module (experts and router included; a fully trained router replaces
/// the gate). Always merges into the full-precision base weights. Writes a Hugging Face
/// model folder (config.json, model.safetensors or shards with an index, tokenizer files)
/// into a temporary folder that is renamed into place when complete.
/// Streams: the model is never loaded. The adapters are laid out against the config's
/// module shapes (ModuleShapes), the output tensors and shards are planned from the
/// checkpoint's tensor table, and each tensor is then read from the mapped file, merged,
/// checked, encoded and written after its file's header (SafeTensorsStreamWriter), so
/// memory holds one tensor (fp32, plus its encoding) and the adapters, whatever the model's size.
public enum Merger {
    public struct Options: Sendable {
        /// Output element type; nil: the base checkpoint's.
        public var dtype: DType?
        /// Shard the weights above this many bytes per file.
        public var maxShardBytes = 2 << 30
        public var overwrite = false
        public init() {}
    }

    public struct Summary: Sendable {
        public var tensors: Int
        public var mergedModules: Int
        public var files: Int
        public var dtype: DType
        public var bytes: Int
        /// MXFP4 experts were written dequantized (in `dtype`) and quantization_config dropped.
        public var dequantizedMXFP4 = false
    }

    public static func merge(modelDir: String, adapters: [(path: String, weight: Float)], outDir: String,
                             options: Options = Options()) throws -> Summary {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: options.overwrite, inputs: [modelDir] + adapters.map(\.path), command: "merge")
        // Only the tensor table is read here (the files are mapped, not loaded); each base
        // tensor is read once, when it is written.
        let ck = try Checkpoint(directory: modelDir)
        guard ck.gguf == nil else {
            throw MoETuneError.file(path: modelDir, message: "a GGUF model merges into a GGUF file only (it has no config.json for a Hugging Face folder): pass --format gguf")
        }
        try checkBase(ck)
        let shapes = ModuleShapes(config: ck.config)
        let sets = try adapters.map { (try PEFTAdapter.load(directory: $0.path, shapes: shapes), $0.weight) }
        let mixed = try AdapterSet.mix(sets.map { (set: $0.0, weight: $0.1) }, shapes: shapes)
        defer { withExtendedLifetime((sets, mixed)) {} }   // the adapters' A and B point into them
        let byModule = Dictionary(uniqueKeysWithValues: mixed.all.map { ($0.module, $0) })
        let c = ck.config, f = c.family
        let baseDType = ck.info(f.embedTokens)?.dtype ?? .f32
        let dtype = options.dtype ?? baseDType
        guard [.f32, .f16, .bf16].contains(dtype) else { throw MoETuneError.invalid("--dtype must be f32, bf16 or f16") }

        var merged = 0
        /// Refuses a base tensor whose shape is not the one config.json gives (a delta of
        /// the adapter's shape would not fit), as loading the model would.
        func check(_ name: String, _ shape: [Int], _ expected: [Int]) throws {
            guard shape == expected else {
                throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has shape \(shape), expected \(expected) from config.json")
            }
        }
        /// The merged fp32 values of tensor `name` [shape] from its base values at `src`.
        func mergedValues(_ name: String, shape: [Int], from src: UnsafePointer<Float>) throws -> [Float] {
            let count = shape.reduce(1, *)
            var values = [Float](repeating: 0, count: count)
            values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: src, count: count) }
            func add(_ module: String, at offset: Int) {
                guard let a = byModule[module] else { return }
                values.withUnsafeMutableBufferPointer { buf in
                    BLAS.gemm(.none, .none, m: a.outFeatures, n: a.inFeatures, k: a.rank, alpha: a.scale,
                              a: a.b, lda: a.rank, b: a.a, ldb: a.inFeatures, beta: 1,
                              c: buf.baseAddress! + offset, ldc: a.inFeatures)
                }
                merged += 1
            }
            if let (l, gateUp) = f.fusedExpertTensor(name), f.moe?.transposedInterleaved == true {
                // GPT-OSS: gate_up_proj [E, H, 2I] (column 2i gate, 2i+1 up), down_proj [E, I, H]:
                // each expert's delta [out, in] = s B A lands transposed (and interleaved).
                let (i, h) = (c.expertIntermediateSize, c.hiddenSize)
                try check(name, shape, gateUp ? [c.numExperts, h, 2 * i] : [c.numExperts, i, h])
                var delta = [Float](repeating: 0, count: i * h)
                func addTransposed(_ module: String, at offset: Int, columns: Int, stride: Int, first: Int) {
                    guard let a = byModule[module] else { return }
                    delta.withUnsafeMutableBufferPointer { d in
                        BLAS.gemm(.none, .none, m: a.outFeatures, n: a.inFeatures, k: a.rank, alpha: a.scale,
                                  a: a.b, lda: a.rank, b: a.a, ldb: a.inFeatures, beta: 0, c: d.baseAddress!, ldc: a.inFeatures)
                    }
                    // delta [out, in] → W[in, columns]: W[x, first + stride * o] += delta[o, x].
                    for o in 0..<a.outFeatures {
                        for x in 0..<a.inFeatures { values[offset + x * columns + first + stride * o] += delta[o * a.inFeatures + x] }
                    }
                    merged += 1
                }
                for e in 0..<c.numExperts {
                    if gateUp {
                        addTransposed(f.module(.expert(e, .gate), layer: l), at: e * 2 * i * h, columns: 2 * i, stride: 2, first: 0)
                        addTransposed(f.module(.expert(e, .up), layer: l), at: e * 2 * i * h, columns: 2 * i, stride: 2, first: 1)
                    } else {
                        addTransposed(f.module(.expert(e, .down), layer: l), at: e * i * h, columns: h, stride: 1, first: 0)
                    }
                }
            } else if let (l, gateUp) = f.fusedExpertTensor(name) {
                let (i, h) = (c.expertIntermediateSize, c.hiddenSize)
                try check(name, shape, gateUp ? [c.numExperts, 2 * i, h] : [c.numExperts, h, i])
                for e in 0..<c.numExperts {
                    if gateUp {
                        add(f.module(.expert(e, .gate), layer: l), at: e * 2 * i * h)
                        add(f.module(.expert(e, .up), layer: l), at: e * 2 * i * h + i * h)
                    } else {
                        add(f.module(.expert(e, .down), layer: l), at: e * h * i)
                    }
                }
            } else if name.hasSuffix(".weight") {
                let module = f.canonicalModule(String(name.dropLast(".weight".count)))
                if let (l, slot) = f.parse(module: module), slot == .router, l < mixed.routers.count,
                   let r = mixed.routers[l] {
                    try check(name, shape, [r.experts, r.hidden])
                    values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: r.weight, count: r.experts * r.hidden) }
                    merged += 1
                } else {
                    if let a = byModule[module] { try check(name, shape, [a.outFeatures, a.inFeatures]) }
                    add(module, at: 0)
                }
            }
            // A NaN or infinite merged weight would silently break every later use: refuse it.
            if let i = values.firstIndex(where: { !$0.isFinite }) {
                throw MoETuneError.file(path: modelDir, message: "merging gives a non-finite weight in \(name) (element \(i) is \(values[i])); check the adapters (\(adapters.map(\.path).joined(separator: ", "))) and the base for NaN/inf values")
            }
            return values
        }

        // GPT-OSS's released checkpoints hold the experts as MXFP4 blocks. With expert adapters,
        // the experts are written dequantized (as transformers loads them on a CPU and peft's
        // merge_and_unload + save_pretrained writes them) in the output dtype, and config.json
        // loses its quantization_config; without, the blocks are copied as they are.
        let expertAdapters = mixed.all.contains { if case .expert? = f.parse(module: $0.module)?.slot { return true }; return false }
        let dequantizeExperts = f.moe?.transposedInterleaved == true && expertAdapters
            && (0..<c.numLayers).contains { ck.contains(f.fusedGateUp($0) + "_blocks") || ck.contains(f.fusedDown($0) + "_blocks") }
        // As loading the model does: MXFP4 storage that disagrees with config.json is refused.
        if f.moe?.transposedInterleaved == true, ck.gguf == nil {
            for l in 0..<c.numLayers {
                for name in [f.fusedGateUp(l), f.fusedDown(l)] { try ck.checkMXFP4Storage(name, module: f.fusedExperts(l)) }
            }
        }

        // The plan: every output tensor with its shape, its size in the output and where its
        // values come from. Nothing is read yet.
        enum Source { case float, mxfp4, tiedHead, raw(TensorInfo) }
        var entries: [(name: String, shape: [Int], source: Source, bytes: Int)] = []
        for name in ck.tensorNames.sorted() {
            let info = ck.info(name)!
            if dequantizeExperts, name.hasSuffix("_blocks") || name.hasSuffix("_scales") {
                let base = String(name.dropLast("_blocks".count))
                guard let (_, gateUp) = f.fusedExpertTensor(base) else {
                    throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(name): MXFP4 blocks of a tensor that is not an expert tensor")
                }
                guard name.hasSuffix("_blocks") else { continue }
                let (i, h, e) = (c.expertIntermediateSize, c.hiddenSize, c.numExperts)
                let shape = gateUp ? [e, h, 2 * i] : [e, i, h]
                entries.append((base, shape, .mxfp4, shape.reduce(1, *) * dtype.size))
            } else if [.f32, .f16, .bf16, .f64].contains(info.dtype) {
                entries.append((name, info.shape, .float, info.count * dtype.size))
            } else {
                entries.append((name, info.shape, .raw(info), info.byteCount))
            }
        }
        entries.sort { $0.name < $1.name }
        // A weight stored 4-bit (checkBase let it through) is copied as it is: an adapter on it
        // cannot be folded in (README "moe-tune merge": merge into the full-precision base).
        for e in entries {
            guard case .raw(let info) = e.source else { continue }
            let adapted: Bool
            if let (l, gateUp) = f.fusedExpertTensor(e.name) {
                adapted = (0..<c.numExperts).contains { x in
                    (gateUp ? [FeedForwardPart.gate, .up] : [.down]).contains { byModule[f.module(.expert(x, $0), layer: l)] != nil }
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
        // A head adapter on a model with tied embeddings needs its own lm_head.
        var untie = false
        if byModule[f.module(.head, layer: 0)] != nil, !ck.contains(f.lmHead) {
            entries.append((f.lmHead, [c.vocabSize, c.hiddenSize], .tiedHead, c.vocabSize * c.hiddenSize * dtype.size))
            untie = true
        }
        // Shards planned from the sizes: a new file once the next tensor would pass the limit.
        var shards: [[Int]] = [[]]
        var shardBytes = 0
        var total = 0
        for (k, e) in entries.enumerated() {
            if shardBytes > 0, shardBytes + e.bytes > options.maxShardBytes {
                shards.append([])
                shardBytes = 0
            }
            shards[shards.count - 1].append(k)
            shardBytes += e.bytes
            total += e.bytes
        }

        /// Reads, merges, checks, encodes and writes one tensor; nothing of it is kept.
        func write(_ e: (name: String, shape: [Int], source: Source, bytes: Int), to out: SafeTensorsStreamWriter) throws {
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
                let head = byModule[f.module(.head, layer: 0)]!
                var v = try ck.withTemporaryFloats(f.embedTokens, shape: e.shape) { Array(UnsafeBufferPointer(start: $0, count: e.shape.reduce(1, *))) }
                v.withUnsafeMutableBufferPointer { buf in
                    BLAS.gemm(.none, .none, m: head.outFeatures, n: head.inFeatures, k: head.rank, alpha: head.scale,
                              a: head.b, lda: head.rank, b: head.a, ldb: head.inFeatures, beta: 1, c: buf.baseAddress!, ldc: head.inFeatures)
                }
                merged += 1
                if let i = v.firstIndex(where: { !$0.isFinite }) {
                    throw MoETuneError.file(path: modelDir, message: "merging gives a non-finite weight in \(e.name) (element \(i) is \(v[i])); check the adapters (\(adapters.map(\.path).joined(separator: ", "))) and the base for NaN/inf values")
                }
                values = v
            }
            if dtype == .f16, let i = values.withUnsafeBufferPointer({ GGMLQuantize.firstOverflow(.f16, $0.baseAddress!, count: $0.count) }) {
                throw MoETuneError.file(path: modelDir, message: "\(e.name): element \(i) is \(values[i]), beyond f16's range (±65504); merge with --dtype bf16 or f32")
            }
            if dtype == .f32 {
                try values.withUnsafeBytes { try out.write(e.name, bytes: $0) }
            } else {
                try encode(values, as: dtype).withUnsafeBytes { try out.write(e.name, bytes: $0) }
            }
        }

        func outDType(_ source: Source) -> DType { if case .raw(let info) = source { info.dtype } else { dtype } }

        return try folder.write { staging in
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
            guard merged == mixed.all.count + mixed.routers.compactMap({ $0 }).count else {
                throw MoETuneError.invalid("internal: merged \(merged) modules but the adapters hold \(mixed.all.count)")
            }
            if shards.count > 1 {
                let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
                try AtomicFile.write(try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]),
                                     to: staging + "/model.safetensors.index.json")
            }
            // config.json as it was, with only the dtype (and an untied head) changed in the
            // text: re-serialising would turn 0.0 into 0, which transformers 5 refuses for
            // float fields.
            var cfgText = try String(contentsOfFile: modelDir + "/config.json", encoding: .utf8)
            let dtypeName = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][dtype.rawValue]!
            for key in ["torch_dtype", "dtype"] {
                cfgText = cfgText.replacingOccurrences(of: "(\"\(key)\"\\s*:\\s*)\"[a-z0-9]+\"", with: "$1\"\(dtypeName)\"",
                                                       options: .regularExpression)
            }
            if untie {
                cfgText = cfgText.replacingOccurrences(of: "(\"tie_word_embeddings\"\\s*:\\s*)true", with: "$1false",
                                                       options: .regularExpression)
            }
            if dequantizeExperts { cfgText = try withoutQuantizationConfig(cfgText, path: modelDir + "/config.json") }
            try AtomicFile.write(Data(cfgText.utf8), to: staging + "/config.json")
            try ModelFolderWriter.copyTokenizerFiles(from: modelDir, to: staging)
            return Summary(tensors: entries.count, mergedModules: merged, files: shards.count, dtype: dtype, bytes: total,
                           dequantizedMXFP4: dequantizeExperts)
        }
    }

    /// What loading the model refused, checked on the tensor table alone (nothing is read):
    /// the embedding, lm_head (unless tied), the norms, biases, sinks and every plain linear
    /// weight (attention, dense MLP, shared expert and its gate), each MoE layer's router and
    /// experts (per expert, fused, or GPT-OSS's fused tensors or their MXFP4 blocks) present,
    /// in config.json's shape. A tensor the merge copies without adding to must be checked
    /// here: a missing one would otherwise be silently left out of the output.
    package static func checkBase(_ ck: Checkpoint) throws {
        let c = ck.config, f = c.family, h = c.hiddenSize
        let shapes = ModuleShapes(config: c)
        let floatTypes: [DType] = [.f32, .f16, .bf16, .f64]
        /// `packed`: a linear weight, which may be bitsandbytes 4-bit bytes of another shape
        /// (`moe-tune quantize`), checked as loading checks it (its quant state's shape, the
        /// packed data's and scales' sizes: Checkpoint.checkBnb4bit, header and state only);
        /// anything else must be a float tensor. (Byte lengths against shape and dtype are
        /// checked when the safetensors header is read.)
        func need(_ name: String, _ shape: [Int], packed: Bool = true) throws {
            guard let info = ck.info(name) else {
                throw MoETuneError.file(path: ck.directory, message: "tensor \(Printable.quoted(name)) not found in the checkpoint")
            }
            if packed, ck.isBnb4bit(name) {
                try ck.checkBnb4bit(name, shape: shape)
                return
            }
            guard floatTypes.contains(info.dtype) else {
                throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); expected a float type\(packed ? " (or bitsandbytes 4-bit data with its quant_state)" : "")")
            }
            guard info.shape == shape else {
                throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has shape \(info.shape), expected \(shape) from config.json")
            }
        }
        try need(f.embedTokens, [c.vocabSize, h], packed: false)
        try need(f.finalNorm, [h], packed: false)
        if !c.tieWordEmbeddings {
            guard ck.contains(f.lmHead) else {
                throw MoETuneError.file(path: ck.directory, message: "tensor \(Printable.quoted(f.lmHead)) not found and tie_word_embeddings is false")
            }
            try need(f.lmHead, [c.vocabSize, h])
        }
        let slots: [LinearSlot] = [.q, .k, .v, .o, .sharedGate] + FeedForwardPart.allCases.flatMap { [LinearSlot.mlp($0), .shared($0)] }
        let (e, i) = (c.numExperts, c.expertIntermediateSize)
        for l in 0..<c.numLayers {
            try need(f.inputNorm(l), [h], packed: false)
            try need(f.postAttentionNorm(l), [h], packed: false)
            for slot in slots {
                if let s = shapes.linear(f.module(slot, layer: l)) { try need(f.weight(slot, layer: l), [s.rows, s.cols]) }
            }
            if let m = c.mla { try need(f.kvANorm(l), [m.kvLoraRank], packed: false) }
            if let qr = c.mla?.qLoraRank {
                try need(f.qAProj(l), [qr, h])
                try need(f.qANorm(l), [qr], packed: false)
            }
            if c.qkvBias {
                try need(f.bias(.q, layer: l), [c.qDim], packed: false)
                try need(f.bias(.k, layer: l), [c.kvDim], packed: false)
                try need(f.bias(.v, layer: l), [c.kvDim], packed: false)
            }
            if c.oBias { try need(f.bias(.o, layer: l), [h], packed: false) }
            if c.attentionSinks { try need(f.sinks(l), [c.numHeads], packed: false) }
            if let kind = c.qkNorm {
                try need(f.qNorm(l), [kind == .perHead ? c.headDim : c.qDim], packed: false)
                try need(f.kNorm(l), [kind == .perHead ? c.headDim : c.kvDim], packed: false)
            }
            guard c.isMoELayer(l) else { continue }
            if c.routerBias { try need(f.bias(.router, layer: l), [e], packed: false) }
            if f.moe?.transposedInterleaved == true {
                // GPT-OSS: float tensors, or MXFP4 blocks (their storage is checked apart).
                try need(f.fusedRouter(l), [e, h], packed: false)
                for (name, shape) in [(f.fusedGateUp(l), [e, h, 2 * i]), (f.fusedDown(l), [e, i, h])] where !ck.contains(name + "_blocks") {
                    try need(name, shape)
                }
                try need(f.fusedGateUp(l) + "_bias", [e, 2 * i], packed: false)
                try need(f.fusedDown(l) + "_bias", [e, h], packed: false)
            } else if let fused = f.fusedTensors(l, contains: ck.contains) {
                try need(fused.router, [e, h], packed: false)
                try need(fused.gateUp, [e, 2 * i, h])
                try need(fused.down, [e, h, i])
            } else {
                try need(f.weight(.router, layer: l), [e, h], packed: false)
                for x in 0..<e {
                    try need(f.weight(.expert(x, .gate), layer: l), [i, h])
                    try need(f.weight(.expert(x, .up), layer: l), [i, h])
                    try need(f.weight(.expert(x, .down), layer: l), [h, i])
                }
            }
        }
    }

    /// config.json's text without its "quantization_config" object (transformers drops it when
    /// it dequantizes an MXFP4 model on load, and save_pretrained then writes none); the result
    /// must still be JSON without that key.
    package static func withoutQuantizationConfig(_ text: String, path: String) throws -> String {
        let object = "\"quantization_config\"\\s*:\\s*\\{[^{}]*\\}"
        var out = text.replacingOccurrences(of: object + "\\s*,", with: "", options: .regularExpression)
        if out == text { out = text.replacingOccurrences(of: ",\\s*" + object, with: "", options: .regularExpression) }
        guard let json = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], json["quantization_config"] == nil else {
            throw MoETuneError.file(path: path, message: "cannot remove quantization_config from this config.json's text")
        }
        return out
    }

    /// fp32 values as little-endian bytes of `dtype`.
    package static func encode(_ values: [Float], as dtype: DType) -> Data {
        switch dtype {
        case .bf16:
            var out = [UInt16](repeating: 0, count: values.count)
            for i in values.indices { out[i] = FloatConversion.floatToBF16(values[i]).littleEndian }
            return out.withUnsafeBufferPointer { Data(buffer: $0) }
        case .f16:
            var out = [UInt16](repeating: 0, count: values.count)
            for i in values.indices { out[i] = Float16(values[i]).bitPattern.littleEndian }
            return out.withUnsafeBufferPointer { Data(buffer: $0) }
        default:
            return values.withUnsafeBufferPointer { Data(buffer: $0) }
        }
    }
}
