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

    /// Merges `adapters` (each with its weight) into the base in `modelDir` and writes the
    /// folder `outDir`. The steps, each its own function: MergeJob.init (tensor table checked,
    /// adapters read and mixed), plan, shardPlan, writeShards (each tensor read, merged,
    /// checked, encoded, written), checkEveryModuleMerged, the index, mergedConfigText.
    public static func merge(modelDir: String, adapters: [(path: String, weight: Float)], outDir: String,
                             options: Options = Options()) throws -> Summary {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: options.overwrite, inputs: [modelDir] + adapters.map(\.path), command: "merge")
        let job = try MergeJob(modelDir: modelDir, adapters: adapters, dtype: options.dtype)
        // The adapters' A and B point into the job's adapter sets: it must outlive every use.
        return try withExtendedLifetime(job) {
            let (entries, untie) = try job.plan()
            let shards = shardPlan(entries.map(\.bytes), maxBytes: options.maxShardBytes)
            let total = entries.reduce(0) { $0 + $1.bytes }
            return try folder.write { staging in
                let weightMap = try job.writeShards(entries, shards: shards, to: staging)
                try job.checkEveryModuleMerged()
                if shards.count > 1 {
                    let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
                    try AtomicFile.write(try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]),
                                         to: staging + "/model.safetensors.index.json")
                }
                let configPath = modelDir + "/config.json"
                let cfgText = try mergedConfigText(try String(contentsOfFile: configPath, encoding: .utf8), dtype: job.dtype,
                                                   untie: untie, dequantizedExperts: job.dequantizeExperts, path: configPath)
                try AtomicFile.write(Data(cfgText.utf8), to: staging + "/config.json")
                try ModelFolderWriter.copyTokenizerFiles(from: modelDir, to: staging)
                return Summary(tensors: entries.count, mergedModules: job.merged, files: shards.count, dtype: job.dtype, bytes: total,
                               dequantizedMXFP4: job.dequantizeExperts)
            }
        }
    }

    /// The output's shards from the planned tensors' sizes in bytes, in order: a new file once
    /// the next tensor would pass `maxBytes` (a tensor larger than that gets a file of its own);
    /// each shard lists indices into `sizes`.
    package static func shardPlan(_ sizes: [Int], maxBytes: Int) -> [[Int]] {
        var shards: [[Int]] = [[]]
        var shardBytes = 0
        for (k, bytes) in sizes.enumerated() {
            if shardBytes > 0, shardBytes + bytes > maxBytes {
                shards.append([])
                shardBytes = 0
            }
            shards[shards.count - 1].append(k)
            shardBytes += bytes
        }
        return shards
    }

    /// config.json as it was, with only the dtype (and an untied head) changed in the text:
    /// re-serialising would turn 0.0 into 0, which transformers 5 refuses for float fields.
    /// Dequantized MXFP4 experts also drop quantization_config.
    package static func mergedConfigText(_ text: String, dtype: DType, untie: Bool, dequantizedExperts: Bool,
                                         path: String) throws -> String {
        var cfgText = text
        let dtypeName = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][dtype.rawValue]!
        for key in ["torch_dtype", "dtype"] {
            cfgText = cfgText.replacingOccurrences(of: "(\"\(key)\"\\s*:\\s*)\"[a-z0-9]+\"", with: "$1\"\(dtypeName)\"",
                                                   options: .regularExpression)
        }
        if untie {
            cfgText = cfgText.replacingOccurrences(of: "(\"tie_word_embeddings\"\\s*:\\s*)true", with: "$1false",
                                                   options: .regularExpression)
        }
        if dequantizedExperts { cfgText = try withoutQuantizationConfig(cfgText, path: path) }
        return cfgText
    }

    /// What loading the model refused, checked on the tensor table alone (nothing is read):
    /// the embedding, lm_head (unless tied), the norms, biases, sinks and every plain linear
    /// weight (attention, dense MLP, shared expert and its gate), each MoE layer's router and
    /// experts (per expert, fused, or GPT-OSS's fused tensors or their MXFP4 blocks) present,
    /// in config.json's shape. A tensor the merge copies without adding to must be checked
    /// here: a missing one would otherwise be silently left out of the output.
    package static func checkBase(_ ck: Checkpoint) throws {
        let c = ck.config, f = c.family, h = c.hiddenSize
        try need(ck, f.embedTokens, [c.vocabSize, h], packed: false)
        try need(ck, f.finalNorm, [h], packed: false)
        if !c.tieWordEmbeddings {
            guard ck.contains(f.lmHead) else {
                throw MoETuneError.file(path: ck.directory, message: "tensor \(Printable.quoted(f.lmHead)) not found and tie_word_embeddings is false")
            }
            try need(ck, f.lmHead, [c.vocabSize, h])
        }
        for l in 0..<c.numLayers {
            try checkBaseLayer(ck, layer: l)
            if c.isMoELayer(l) { try checkBaseExperts(ck, layer: l) }
        }
    }

    /// Layer l's norms, plain linear weights (attention, dense MLP, shared expert and its
    /// gate, MLA's q_a_proj), biases, sinks and q/k norms, as checkBase checks them.
    static func checkBaseLayer(_ ck: Checkpoint, layer l: Int) throws {
        let c = ck.config, f = c.family, h = c.hiddenSize
        let shapes = ModuleShapes(config: c)
        let slots: [LinearSlot] = [.q, .k, .v, .o, .sharedGate] + FeedForwardPart.allCases.flatMap { [LinearSlot.mlp($0), .shared($0)] }
        try need(ck, f.inputNorm(l), [h], packed: false)
        try need(ck, f.postAttentionNorm(l), [h], packed: false)
        for slot in slots {
            if let s = shapes.linear(f.module(slot, layer: l)) { try need(ck, f.weight(slot, layer: l), [s.rows, s.cols]) }
        }
        if let m = c.mla { try need(ck, f.kvANorm(l), [m.kvLoraRank], packed: false) }
        if let qr = c.mla?.qLoraRank {
            try need(ck, f.qAProj(l), [qr, h])
            try need(ck, f.qANorm(l), [qr], packed: false)
        }
        if c.qkvBias {
            try need(ck, f.bias(.q, layer: l), [c.qDim], packed: false)
            try need(ck, f.bias(.k, layer: l), [c.kvDim], packed: false)
            try need(ck, f.bias(.v, layer: l), [c.kvDim], packed: false)
        }
        if c.oBias { try need(ck, f.bias(.o, layer: l), [h], packed: false) }
        if c.attentionSinks { try need(ck, f.sinks(l), [c.numHeads], packed: false) }
        if let kind = c.qkNorm {
            try need(ck, f.qNorm(l), [kind == .perHead ? c.headDim : c.qDim], packed: false)
            try need(ck, f.kNorm(l), [kind == .perHead ? c.headDim : c.kvDim], packed: false)
        }
    }

    /// MoE layer l's router (and its bias) and experts in their layout (ExpertLayout):
    /// GPT-OSS's fused float tensors or MXFP4 blocks (their storage is checked apart) with
    /// their biases, transformers 5's fused tensors, or one gate, up and down per expert.
    static func checkBaseExperts(_ ck: Checkpoint, layer l: Int) throws {
        let c = ck.config, f = c.family, h = c.hiddenSize, d = ExpertLayout.Dimensions(c)
        let layout = ExpertLayout.of(f, layer: l, contains: ck.contains)
        if c.routerBias { try need(ck, f.bias(.router, layer: l), [d.experts], packed: false) }
        guard let t = layout.tensors(f, layer: l, contains: ck.contains) else {
            try need(ck, f.weight(.router, layer: l), [d.experts, h], packed: false)
            for x in 0..<d.experts {
                for part in FeedForwardPart.allCases {
                    let (rows, cols) = ExpertLayout.matrixShape(part, d)
                    try need(ck, f.weight(.expert(x, part), layer: l), [rows, cols])
                }
            }
            return
        }
        try need(ck, t.router, [d.experts, h], packed: false)
        guard layout == .transposedInterleaved else {
            try need(ck, t.gateUp, layout.shape(gateUp: true, d))
            try need(ck, t.down, layout.shape(gateUp: false, d))
            return
        }
        for (name, gateUp) in [(t.gateUp, true), (t.down, false)] where !ck.contains(name + "_blocks") {
            try need(ck, name, layout.shape(gateUp: gateUp, d))
        }
        try need(ck, t.gateUpBias, layout.biasShape(gateUp: true, d), packed: false)
        try need(ck, t.downBias, layout.biasShape(gateUp: false, d), packed: false)
    }

    /// Refuses tensor `name` of `ck` unless present in `shape`. `packed`: a linear weight,
    /// which may be bitsandbytes 4-bit bytes of another shape (`moe-tune quantize`), checked
    /// as loading checks it (its quant state's shape, the packed data's and scales' sizes:
    /// Checkpoint.checkBnb4bit, header and state only); anything else must be a float tensor.
    /// (Byte lengths against shape and dtype are checked when the safetensors header is read.)
    static func need(_ ck: Checkpoint, _ name: String, _ shape: [Int], packed: Bool = true) throws {
        guard let info = ck.info(name) else {
            throw MoETuneError.file(path: ck.directory, message: "tensor \(Printable.quoted(name)) not found in the checkpoint")
        }
        if packed, ck.isBnb4bit(name) {
            try ck.checkBnb4bit(name, shape: shape)
            return
        }
        guard [DType.f32, .f16, .bf16, .f64].contains(info.dtype) else {
            throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); expected a float type\(packed ? " (or bitsandbytes 4-bit data with its quant_state)" : "")")
        }
        guard info.shape == shape else {
            throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) has shape \(info.shape), expected \(shape) from config.json")
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
