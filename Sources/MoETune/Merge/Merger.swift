import Foundation

/// Folds LoRA adapters into a copy of the base model: W += sum_i w_i * s_i * B_i A_i for
/// every adapted module (experts and router included; a fully trained router replaces
/// the gate). Always merges into the full-precision base weights. Writes a Hugging Face
/// model folder (config.json, model.safetensors or shards with an index, tokenizer files)
/// into a temporary folder that is renamed into place when complete.
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
    }

    public static func merge(modelDir: String, adapters: [(path: String, weight: Float)], outDir: String,
                             options: Options = Options()) throws -> Summary {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: options.overwrite, inputs: [modelDir] + adapters.map(\.path), command: "merge")
        let ck = try Checkpoint(directory: modelDir)
        let model = try Transformer(checkpoint: ck)
        let sets = try adapters.map { (try PEFTAdapter.load(directory: $0.path, model: model), $0.weight) }
        let mixed = try AdapterSet.mix(sets.map { (set: $0.0, weight: $0.1) }, model: model)
        let byModule = Dictionary(uniqueKeysWithValues: mixed.all.map { ($0.module, $0) })
        let c = model.config, f = c.family
        let baseDType = ck.info(f.embedTokens)?.dtype ?? .f32
        let dtype = options.dtype ?? baseDType
        guard [.f32, .f16, .bf16].contains(dtype) else { throw MoETuneError.invalid("--dtype must be f32, bf16 or f16") }

        var merged = 0
        /// The merged fp32 values of one tensor.
        func mergedValues(_ name: String, _ info: TensorInfo) throws -> [Float] {
            var values = [Float](repeating: 0, count: info.count)
            let src = try ck.floats(name, shape: info.shape)
            values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: src, count: info.count) }
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
                    values.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: r.weight, count: r.experts * r.hidden) }
                    merged += 1
                } else {
                    add(module, at: 0)
                }
            }
            return values
        }

        // GPT-OSS's released checkpoints hold the experts as MXFP4 blocks: an expert adapter
        // cannot be folded into them (moe-tune writes no MXFP4).
        if f.moe?.transposedInterleaved == true, mixed.all.contains(where: { if case .expert? = f.parse(module: $0.module)?.slot { return true }; return false }) {
            for l in 0..<c.numLayers where ck.contains(f.fusedGateUp(l) + "_blocks") || ck.contains(f.fusedDown(l) + "_blocks") {
                throw MoETuneError.file(path: ck.path(of: ck.contains(f.fusedGateUp(l) + "_blocks") ? f.fusedGateUp(l) + "_blocks" : f.fusedDown(l) + "_blocks"),
                    message: "\(f.fusedGateUp(l)): merging expert adapters into MXFP4 experts is not supported (no MXFP4 writer); merge into a bf16 copy of the model, or train without the mlp target")
            }
        }
        var entries: [(name: String, shape: [Int], values: [Float]?, raw: (DType, Data)?)] = []
        for name in ck.tensorNames.sorted() {
            let info = ck.info(name)!
            if [.f32, .f16, .bf16, .f64].contains(info.dtype) {
                entries.append((name, info.shape, try mergedValues(name, info), nil))
            } else {
                let bytes = try SafeTensorsFile(path: ck.path(of: name)).bytes(of: info)
                entries.append((name, info.shape, nil, (info.dtype, Data(bytes))))
            }
        }
        // A head adapter on a model with tied embeddings needs its own lm_head.
        var untie = false
        if let head = byModule[f.module(.head, layer: 0)], !ck.contains(f.lmHead) {
            var values = [Float](repeating: 0, count: c.vocabSize * c.hiddenSize)
            values.withUnsafeMutableBufferPointer { buf in
                buf.baseAddress!.update(from: model.embed.pointer, count: buf.count)
                BLAS.gemm(.none, .none, m: head.outFeatures, n: head.inFeatures, k: head.rank, alpha: head.scale,
                          a: head.b, lda: head.rank, b: head.a, ldb: head.inFeatures, beta: 1, c: buf.baseAddress!, ldc: head.inFeatures)
            }
            merged += 1
            entries.append((f.lmHead, [c.vocabSize, c.hiddenSize], values, nil))
            untie = true
        }
        // A NaN or infinite merged weight would silently break every later use: refuse it.
        for e in entries {
            if let v = e.values, let i = v.firstIndex(where: { !$0.isFinite }) {
                throw MoETuneError.file(path: modelDir, message: "merging gives a non-finite weight in \(e.name) (element \(i) is \(v[i])); check the adapters (\(adapters.map(\.path).joined(separator: ", "))) and the base for NaN/inf values")
            }
        }
        guard merged == mixed.all.count + mixed.routers.compactMap({ $0 }).count else {
            throw MoETuneError.invalid("internal: merged \(merged) modules but the adapters hold \(mixed.all.count)")
        }

        return try folder.write { staging in
            var shards: [[SafeTensorsWriter.Entry]] = [[]]
            var shardBytes = 0
            var total = 0
            for e in entries {
                let entry: SafeTensorsWriter.Entry
                if let values = e.values {
                    entry = .init(name: e.name, dtype: dtype, shape: e.shape, data: encode(values, as: dtype))
                } else {
                    entry = .init(name: e.name, dtype: e.raw!.0, shape: e.shape, data: e.raw!.1)
                }
                if shardBytes > 0, shardBytes + entry.data.count > options.maxShardBytes {
                    shards.append([])
                    shardBytes = 0
                }
                shards[shards.count - 1].append(entry)
                shardBytes += entry.data.count
                total += entry.data.count
            }
            var weightMap: [String: String] = [:]
            for (i, shard) in shards.enumerated() {
                let file = shards.count == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", i + 1, shards.count)
                var w = SafeTensorsWriter()
                w.entries = shard
                try w.write(to: staging + "/" + file)
                for e in shard { weightMap[e.name] = file }
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
            try AtomicFile.write(Data(cfgText.utf8), to: staging + "/config.json")
            try ModelFolderWriter.copyTokenizerFiles(from: modelDir, to: staging)
            return Summary(tensors: entries.count, mergedModules: merged, files: shards.count, dtype: dtype, bytes: total)
        }
    }

    /// fp32 values as little-endian bytes of `dtype`.
    static func encode(_ values: [Float], as dtype: DType) -> Data {
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
