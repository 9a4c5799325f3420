import Foundation
import MoEFormats
import MoEText
import MoECore

/// `moe-tune quantize`: writes a model folder with its decoder-layer linear weights in the
/// 4-bit format transformers saves for a bitsandbytes model (weight, weight.absmax,
/// weight.quant_map, weight.nested_absmax, weight.nested_quant_map,
/// weight.quant_state.bitsandbytes__nf4, and quantization_config in config.json), so a
/// model is quantized once and loads quickly afterwards, in moe-tune and in transformers.
/// Tensor by tensor: at most one full-precision tensor exists at a time. Fused expert
/// tensors [E, rows, cols] are quantized whole (flattened, as bitsandbytes' quantize_4bit
/// does), their 3-D shape in the quant state; the loader slices them per expert.
public enum Quantizer {
    public struct Summary: Sendable {
        public var quantized: Int
        public var kept: Int
        public var bytes: Int
    }

    public static func quantize(modelDir: String, outDir: String, doubleQuant: Bool = true, keepExperts: Bool = false,
                                overwrite: Bool = false) throws -> Summary {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: overwrite, inputs: [modelDir], command: "quantize")
        let ck = try Checkpoint(directory: modelDir)
        let family = ck.config.family
        // GPT-OSS reads only fp32/bf16 or MXFP4 experts (its config refuses bitsandbytes'
        // quantization_config): QLoRA quantizes it at load instead.
        if ExpertLayout.isTransposedInterleaved(family) {
            throw MoETuneError.file(path: modelDir, message: "\(family.name): `moe-tune quantize` is not supported for this family; QLoRA quantizes its weights to NF4 at load (lora.qlora)")
        }
        var writer = SafeTensorsWriter()
        var quantized = 0, kept = 0
        let nf4Code = NF4Weight.code
        for name in ck.tensorNames.sorted() {
            let info = ck.info(name)!
            let fused = try isFusedExpertTensor(name, info, ck, keepExperts: keepExperts)
            guard fused || family.isDecoderLinearWeight(name, keepExperts: keepExperts), fused || info.shape.count == 2, !ck.isBnb4bit(name) else {
                let bytes = try SafeTensorsFile(path: ck.path(of: name)).bytesCopy(info)
                writer.add(.init(name: name, dtype: info.dtype, shape: info.shape, data: bytes))
                kept += 1
                continue
            }
            let cols = info.shape.last!, rows = info.count / max(cols, 1)
            let q = try ck.withTemporaryFloats(name, shape: info.shape) { NF4Weight.quantize($0, rows: rows, cols: cols, doubleQuant: doubleQuant) }
            let n = rows * cols
            writer.add(.init(name: name, dtype: .u8, shape: [(n + 1) / 2, 1], data: Data(bytes: q.packed, count: (n + 1) / 2)))
            writer.add(.init(name: name + ".quant_map", shape: [16], floats: nf4Code))
            var state: [String: Any] = ["quant_type": "nf4", "blocksize": 64,
                                        "dtype": ["F32": "float32", "BF16": "bfloat16", "F16": "float16"][info.dtype.rawValue] ?? "float32",
                                        "shape": info.shape]
            if let codes = q.absmaxCodes {
                writer.add(.init(name: name + ".absmax", dtype: .u8, shape: [q.blocks], data: Data(bytes: codes, count: q.blocks)))
                writer.add(.init(name: name + ".nested_absmax", shape: [q.nestedAbsmax.count], floats: q.nestedAbsmax))
                writer.add(.init(name: name + ".nested_quant_map", shape: [256], floats: q.nestedMap))
                state["nested_blocksize"] = 256
                state["nested_dtype"] = "float32"
                state["nested_offset"] = Double(q.offset)
            } else {
                writer.add(.init(name: name + ".absmax", shape: [q.blocks], floats: UnsafeBufferPointer(start: q.absmax!, count: q.blocks)))
            }
            let json = try JSONSerialization.data(withJSONObject: state, options: [.sortedKeys])
            writer.add(.init(name: name + ".quant_state.bitsandbytes__nf4", dtype: .u8, shape: [json.count], data: json))
            quantized += 1
        }
        return try folder.write { staging in
            let data = try writer.serialized()
            try AtomicFile.write(data, to: staging + "/model.safetensors")
            // config.json as it was, plus quantization_config (inserted as text, so float
            // fields keep their form).
            var cfg = try String(contentsOfFile: modelDir + "/config.json", encoding: .utf8)
            if !cfg.contains("\"quantization_config\""), let close = cfg.lastIndex(of: "}") {
                let q = """
                ,
                  "quantization_config": {"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": \(doubleQuant), "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": \(keepExperts ? "[\"\(family.expertBlockModule)\", \"lm_head\"]" : "null"), "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"}

                """
                var head = String(cfg[..<close])
                while head.last?.isWhitespace == true { head.removeLast() }
                cfg = head + q + "}\n"
            }
            try AtomicFile.write(Data(cfg.utf8), to: staging + "/config.json")
            try ModelFolderWriter.copyTokenizerFiles(from: modelDir, to: staging)
            return Summary(quantized: quantized, kept: kept, bytes: data.count)
        }
    }

    /// Whether `name` is a fused expert tensor that is quantized whole (ExpertLayout.fused:
    /// Granite's input_linear / output_linear, transformers 5's gate_up_proj / down_proj),
    /// flattened [E*rows, cols]. Each expert's gate, up and down (the parts the tensor holds)
    /// must fill whole blocks of 64 so that moe-tune can read them back as slices (then the
    /// codes and scales equal quantizing each alone): one that does not is refused.
    static func isFusedExpertTensor(_ name: String, _ info: TensorInfo, _ ck: Checkpoint, keepExperts: Bool) throws -> Bool {
        guard !keepExperts, let t = ck.config.family.fusedExpertTensor(name), info.shape.count == 3, !ck.isBnb4bit(name) else { return false }
        guard (info.shape[1] * info.shape[2] / ExpertLayout.parts(gateUp: t.gateUp).count) % NF4Weight.blockSize == 0 else {
            throw MoETuneError.file(path: ck.path(of: name),
                message: "\(name) \(info.shape): an expert's slice is not a multiple of 64 values; use --keep-experts")
        }
        return true
    }
}
