import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// The command-line layer: parses arguments, hands off to library code, renders
/// progress and results, and decides exit codes.
struct MoETuneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-tune",
        abstract: "Fine-tune Mixture-of-Experts and dense language models on a CPU with LoRA and QLoRA.",
        discussion: "Twelve families (Llama, Mistral, Mixtral, Qwen2/3, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE, DeepSeek-V2, GPT-OSS, Seed-OSS), Hugging Face folders or GGUF files. Start with README.md; every command is described in docs/commands.md.",
        subcommands: [TrainCommand.self, EvalCommand.self, ExpertsCommand.self, PruneCommand.self, MergeCommand.self, ExportLoRACommand.self, GenerateCommand.self, ServeCommand.self, TokenizeCommand.self, QuantizeCommand.self, BenchBLASCommand.self, BenchTrainCommand.self, BenchTokenizerCommand.self])
}

/// The largest --max-new-tokens (eval --generate, generate): far beyond any model's context,
/// and far from overflowing the sizes computed from it.
let maxNewTokensLimit = 1 << 20

/// Prints a library error as one line and exits non-zero. Before any work the run options are
/// built and installed (StartUp): every MOE_TUNE_* switch set to a value it does not take is
/// refused, an unknown MOE_TUNE_* variable gets a one-line warning. `threads`: `--threads`.
func runReportingErrors(threads: Int? = nil, _ body: () throws -> Void) throws {
    do {
        try StartUp.runOptions(threads: threads)
        try body()
    } catch let error as MoETuneError {
        FileHandle.standardError.write(Data("moe-tune: error: \(error.description)\n".utf8))
        throw ExitCode(1)
    }
}

MoETuneCommand.main()
