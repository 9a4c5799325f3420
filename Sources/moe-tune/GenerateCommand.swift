import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text with a KV cache, streaming it as it comes.",
        discussion: "Greedy by default; --temperature > 0 samples (with --top-k, --top-p, --seed). --chat reads turns from standard input.")

    @Option(help: "Model folder.") var model: String
    @Option(help: "PEFT adapter folder (repeatable).") var adapter: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: "Weight of each adapter (repeatable).") var weight: [Float] = []
    @Option(help: "The prompt (with --chat: the first user message).") var prompt: String?
    @Option(help: "Quantize the base weights while loading: nf4.") var quantize: String?
    @Option(name: .customLong("base-dtype"), help: "Hold the frozen base in: fp32, bf16 (native bf16 only), bf16-emulated (half the memory, slower; README).") var baseDType = "fp32"
    @Flag(help: "Chat: wrap turns in the chat template; without --prompt, read user turns from standard input.") var chat = false
    @Option(help: "Chat format: default the model's own template (else Llama-2 [INST]); \"llama2\", a .jinja file, or a {user}/{assistant} turn.") var chatTemplate: String?
    // `.unconditional`: a negative value is the option's value (refused by validate with a
    // reason), not a flag that leaves the option "missing".
    @Option(parsing: .unconditional, help: "Largest number of new tokens.") var maxNewTokens = 256
    @Option(parsing: .unconditional, help: "Sampling temperature; 0 is greedy.") var temperature: Double = 0
    @Option(parsing: .unconditional, help: "Keep the k most likely tokens (0: all).") var topK = 0
    @Option(parsing: .unconditional, help: "Keep the smallest set of tokens whose probability reaches p.") var topP: Double = 1
    @Option(parsing: .unconditional, help: "Random seed for sampling (0 to 2^64 - 1).", transform: parseSeed) var seed: UInt64 = 0

    func validate() throws {
        guard prompt != nil || chat else { throw ValidationError("give --prompt TEXT, or --chat") }
        guard temperature.isFinite else { throw ValidationError("--temperature must be a finite number, got \(temperature)") }
        guard temperature >= 0 else { throw ValidationError("--temperature must not be negative") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
        guard topK >= 0 else { throw ValidationError("--top-k must not be negative") }
        guard maxNewTokens >= 1 else { throw ValidationError("--max-new-tokens must be at least 1") }
        guard maxNewTokens <= maxNewTokensLimit else { throw ValidationError("--max-new-tokens must be at most \(maxNewTokensLimit), got \(maxNewTokens)") }
        guard weight.isEmpty || weight.count == adapter.count else { throw ValidationError("give one --weight per --adapter") }
        if let quantize, quantize != "nf4" { throw ValidationError("--quantize supports nf4 only") }
        _ = try parseBaseDType(baseDType)
    }

    func run() throws {
        try runReportingErrors {
            let base = try parseBaseDType(baseDType)
            noteBaseDType(base)
            let loaded = try LoadedModel.load(directory: model, quantize: quantize == nil ? nil : QuantizationSpec(doubleQuant: true), base: base)
            let adapters = try loadAdapters(adapter, weights: weight, model: loaded.model)
            let format = try ChatFormat.resolve(chatTemplate, modelDirectory: model)
            var encoder: ChatEncoder?
            if case let .jinja(renderer) = format { encoder = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer) }
            var stops = loaded.tokenizer.stopIds
            if chat, let id = encoder?.endOfTurnId() { stops.insert(id) }
            var options = SamplingOptions()
            options.temperature = temperature; options.topK = topK; options.topP = topP; options.seed = seed
            options.maxNewTokens = maxNewTokens
            let generator = Generator(model: loaded.model, adapters: adapters, maxLength: min(loaded.model.config.maxPositionEmbeddings, 4096),
                                      stopIds: stops)
            let tok = loaded.tokenizer
            func reply(to promptIDs: [Int32]) throws -> String {
                var ids: [Int32] = []
                var printed = ""
                _ = try generator.generate(prompt: promptIDs, options: options) { t in
                    ids.append(t)
                    // Decode the whole reply each time so multi-token characters print whole.
                    if let text = try? tok.decode(ids), text.count > printed.count, text.hasPrefix(printed) {
                        FileHandle.standardOutput.write(Data(String(text.dropFirst(printed.count)).utf8))
                        printed = text
                    }
                }
                print("")
                return (try? tok.decode(ids)) ?? printed
            }
            if !chat {
                _ = try reply(to: tok.encode(prompt!, addSpecialTokens: true))
                return
            }
            var messages: [ChatMessage] = []
            func turn(_ user: String) throws {
                messages.append(ChatMessage(role: "user", content: user))
                let ids: [Int32]
                switch format {
                case .jinja:
                    ids = try encoder!.promptIds(messages)
                case let .builtin(template):
                    ids = try tok.encode(try template.prompt(messages.map { ($0.role, $0.content ?? "") }), addSpecialTokens: true)
                }
                let answer = try reply(to: ids)
                messages.append(ChatMessage(role: "assistant", content: answer.trimmingCharacters(in: .whitespaces)))
            }
            if let prompt { try turn(prompt); return }
            FileHandle.standardError.write(Data("chat: type a message, an empty line or end of input stops\n".utf8))
            while true {
                FileHandle.standardError.write(Data("> ".utf8))
                guard let line = readLine(), !line.isEmpty else { break }
                try turn(line)
            }
        }
    }
}

/// --seed: an integer from 0 to 2^64 - 1 ("-1" used to read as a flag: "Missing value").
func parseSeed(_ text: String) throws -> UInt64 {
    guard let v = UInt64(text) else {
        throw ValidationError(Int64(text).map { $0 < 0 } ?? false ? "--seed must be at least 0, got \(text)"
                                  : "--seed must be an integer from 0 to \(UInt64.max), got \(text)")
    }
    return v
}

/// Loads and, for several, mixes adapters with their weights.
func loadAdapters(_ paths: [String], weights: [Float], model: Transformer) throws -> AdapterSet? {
    guard !paths.isEmpty else { return nil }
    let w = weights.isEmpty ? Array(repeating: Float(1), count: paths.count) : weights
    let sets = try zip(paths, w).map { (set: try PEFTAdapter.load(directory: $0.0, model: model), weight: $0.1) }
    return try AdapterSet.mix(sets, model: model)
}
