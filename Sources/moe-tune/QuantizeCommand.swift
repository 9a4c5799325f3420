import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a 4-bit (NF4) copy of a model in the checkpoint format transformers saves for bitsandbytes.",
        discussion: """
        Attention, MLP and expert weights become NF4 (blocks of 64, double quantization unless \
        --no-double-quant); embeddings, router, norms and lm_head stay as they are. The result loads \
        in moe-tune (eval, generate, train) and in transformers with bitsandbytes. transformers 5 keeps \
        Mixtral experts fused in full precision and cannot load 4-bit experts: pass --keep-experts for \
        a folder it can load.
        """)

    @Option(help: "Model folder.") var model: String
    @Option(help: "Output folder (must not exist, or be empty).") var out: String
    @Flag(help: "Keep the experts in full precision (for transformers 5).") var keepExperts = false
    @Flag(help: "Store the block scales in fp32 instead of double-quantizing them.") var noDoubleQuant = false
    @Flag(help: "Replace a non-empty --out folder.") var overwrite = false

    func run() throws {
        try runReportingErrors {
            let start = Date()
            let s = try Quantizer.quantize(modelDir: model, outDir: out, doubleQuant: !noDoubleQuant, keepExperts: keepExperts,
                                           overwrite: overwrite)
            print("quantized \(s.quantized) weights to NF4 (\(s.kept) tensors kept) into \(out): "
                + String(format: "%.1f MiB in %@", Double(s.bytes) / 1_048_576, formatDuration(Date().timeIntervalSince(start))))
        }
    }
}
