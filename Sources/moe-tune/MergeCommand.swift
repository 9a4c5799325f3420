import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold LoRA adapters into the base weights and write a Hugging Face model folder.",
        discussion: """
        W += sum_i weight_i * scale_i * B_i A_i for every adapted module (experts and router included; \
        a fully trained router replaces the gate). Always merges into the full-precision base, also for \
        adapters trained with QLoRA. Writes config.json, model.safetensors (sharded with an index above \
        --max-shard-mb) and the tokenizer files, in the base's dtype unless --dtype says otherwise. \
        With --format gguf, --out is one GGUF file for llama.cpp / Ollama (weights in --gguf-type, \
        the base GGUF's tokenizer and chat template); without --adapter that converts the base \
        (e.g. a Q4_1 GGUF to f32 or q4_0).
        """)

    @Option(help: "Base model folder or .gguf file.") var model: String
    @Option(help: "PEFT adapter folder (repeatable).") var adapter: [String] = []
    @Option(help: "Weight of each adapter, in --adapter order (repeatable; default 1 each).") var weight: [Float] = []
    @Option(help: "Output folder (must not exist, or be empty).") var out: String
    @Option(help: "Output dtype: f32, bf16 or f16 (default: the base's).") var dtype: String?
    @Option(help: "Largest shard in MiB.") var maxShardMb = 2048
    @Flag(help: "Replace a non-empty --out folder (or an existing --out GGUF file).") var overwrite = false
    @Option(help: "Output format: hf (a Hugging Face folder) or gguf (one .gguf file).") var format = "hf"
    @Option(help: "GGUF weight type: f32, f16, bf16, q8_0 or q4_0 (with --format gguf; default f16).") var ggufType: String?

    func validate() throws {
        guard !adapter.isEmpty || format == "gguf" else { throw ValidationError("give at least one --adapter (without one, only --format gguf: a conversion)") }
        guard weight.isEmpty || weight.count == adapter.count else {
            throw ValidationError("give one --weight per --adapter (\(adapter.count)), or none")
        }
        if let dtype, !["f32", "bf16", "f16"].contains(dtype) { throw ValidationError("--dtype must be f32, bf16 or f16") }
        guard maxShardMb >= 1 else { throw ValidationError("--max-shard-mb must be at least 1") }
        guard ["hf", "gguf"].contains(format) else { throw ValidationError("--format must be hf or gguf") }
        if let ggufType {
            guard format == "gguf" else { throw ValidationError("--gguf-type is for --format gguf; use --dtype for a Hugging Face folder") }
            guard GGMLQuantize.writable.contains(where: { $0.name.lowercased() == ggufType }) else {
                throw ValidationError("--gguf-type must be f32, f16, bf16, q8_0 or q4_0")
            }
        }
        if format == "gguf", dtype != nil { throw ValidationError("--dtype is for --format hf; use --gguf-type") }
    }

    func run() throws {
        try runReportingErrors {
            var o = Merger.Options()
            o.dtype = dtype.map { ["f32": DType.f32, "bf16": .bf16, "f16": .f16][$0]! }
            o.maxShardBytes = maxShardMb << 20
            o.overwrite = overwrite
            let weights = weight.isEmpty ? Array(repeating: Float(1), count: adapter.count) : weight
            let start = Date()
            if format == "gguf" {
                let type = GGMLQuantize.writable.first { $0.name.lowercased() == (ggufType ?? "f16") }!
                let s = try GGUFExport.mergedModel(model: model, adapters: Array(zip(adapter, weights)).map { (path: $0.0, weight: $0.1) },
                                                   out: out, type: type, overwrite: overwrite)
                print("merged \(s.mergedModules) modules from \(adapter.count) adapter(s) into \(out): \(s.tensors) tensors, "
                    + "\(type.name), \(String(format: "%.1f", Double(s.bytes) / 1_048_576)) MiB in \(formatDuration(Date().timeIntervalSince(start)))")
                return
            }
            let s = try Merger.merge(modelDir: model, adapters: Array(zip(adapter, weights)).map { (path: $0.0, weight: $0.1) },
                                     outDir: out, options: o)
            if s.dequantizedMXFP4 {
                FileHandle.standardError.write(Data(("moe-tune: note: the base's MXFP4 experts are written dequantized (\(s.dtype.rawValue)) with the "
                    + "adapters merged, and config.json's quantization_config is dropped (as transformers + peft do)\n").utf8))
            }
            print("merged \(s.mergedModules) modules from \(adapter.count) adapter(s) into \(out): \(s.tensors) tensors, "
                + "\(s.files) file(s), \(s.dtype.rawValue), \(String(format: "%.1f", Double(s.bytes) / 1_048_576)) MiB in \(formatDuration(Date().timeIntervalSince(start)))")
        }
    }
}
