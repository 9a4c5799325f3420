import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct ExportLoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-lora",
        abstract: "Write a PEFT LoRA adapter as a llama.cpp GGUF LoRA, with an Ollama Modelfile beside it.",
        discussion: """
        The adapter file is what llama.cpp's --lora and its export-lora tool read (tensors \
        blk.N.attn_q.weight.lora_a / .lora_b, adapter.lora.alpha); the Modelfile says FROM the base and \
        ADAPTER the file, so `ollama create NAME -f Modelfile` builds the fine-tuned model.
        """)

    @Option(help: "Base model (.gguf file or Hugging Face folder) the adapter was trained on.") var model: String
    @Option(help: "PEFT adapter folder.") var adapter: String
    @Option(help: "Output .gguf file; a Modelfile is written beside it.") var out: String
    @Flag(help: "Replace an existing --out file and Modelfile.") var overwrite = false

    func run() throws {
        try runReportingErrors {
            let s = try GGUFExport.loraAdapter(model: model, adapter: adapter, out: out, overwrite: overwrite)
            print("wrote \(out): \(s.tensors) tensors, adapter.lora.alpha \(s.alpha); Ollama Modelfile \(s.modelfile)")
        }
    }
}
