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
        discussion: """
        Greedy by default; --temperature > 0 samples (with --top-k, --top-p, --seed). --chat reads turns from standard \
        input. The prompt is fed as one batch, then each new token reads every weight once in its own format (ggml \
        blocks with the activation rounded to 8 bits per block, as llama.cpp does); --exact multiplies as training does. \
        Prompt and decode speeds go to standard error at the end (--json: one object on standard output). \
        --prompts FILE.jsonl answers every {"prompt": ...} line, --parallel of them at once (continuous batching), \
        one JSON line each, in the file's order. See docs/commands.md.
        """)

    @Option(help: "Model folder.") var model: String
    @Option(help: "PEFT adapter folder (repeatable).") var adapter: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: "Weight of each adapter (repeatable).") var weight: [Float] = []
    @Option(help: "The prompt (with --chat: the first user message).") var prompt: String?
    @Option(help: "Quantize the base weights while loading: nf4.") var quantize: String?
    @Option(name: .customLong("base-dtype"), help: "Hold the frozen base in: fp32, bf16 (native bf16 only), bf16-emulated (half the memory, slower; docs/commands.md).") var baseDType = "fp32"
    @Flag(help: "Chat: wrap turns in the chat template; without --prompt, read user turns from standard input.") var chat = false
    @Option(help: "Chat format: default the model's own template (else Llama-2 [INST]); \"llama2\", a .jinja file, or a {user}/{assistant} turn.") var chatTemplate: String?
    // `.unconditional`: a negative value is the option's value (refused by validate with a
    // reason), not a flag that leaves the option "missing".
    @Option(parsing: .unconditional, help: "Largest number of new tokens.") var maxNewTokens = 256
    @Option(parsing: .unconditional, help: "Sampling temperature; 0 is greedy.") var temperature: Double = 0
    @Option(parsing: .unconditional, help: "Keep the k most likely tokens (0: all).") var topK = 0
    @Option(parsing: .unconditional, help: "Keep the smallest set of tokens whose probability reaches p.") var topP: Double = 1
    @Option(parsing: .unconditional, help: "Random seed for sampling (0 to 2^64 - 1).", transform: parseSeed) var seed: UInt64 = 0
    @Flag(help: "Multiply as training does (weights widened to fp32): slower, the reference tokens.") var exact = false
    @Flag(help: "Decode exactly --max-new-tokens tokens, stop tokens included (to measure speed).") var ignoreEos = false
    @Flag(help: "Print one JSON object (prompt_tokens, prompt_tokens_per_s, generated_tokens, tokens_per_s, text) on stdout.") var json = false
    @Option(help: "JSONL file of {\"prompt\": TEXT} (or {\"messages\": [...]} with --chat) lines: answer each, one JSON line per prompt.") var prompts: String?
    @Option(parsing: .unconditional, help: "With --prompts: sequences decoded at once (continuous batching); default every line, up to 256, fewer if their KV caches would pass a quarter of the memory.") var parallel: Int?

    func validate() throws {
        guard prompt != nil || chat || prompts != nil else { throw ValidationError("give --prompt TEXT, --prompts FILE.jsonl, or --chat") }
        guard prompts == nil || prompt == nil else { throw ValidationError("give --prompt or --prompts, not both") }
        if let parallel, !(1...256).contains(parallel) { throw ValidationError("--parallel must be in 1...256, got \(parallel)") }
        guard !(json && chat && prompt == nil && prompts == nil) else { throw ValidationError("--json needs --prompt or --prompts (not an interactive chat)") }
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
            // --prompts may hold chats ({"messages"} lines) without --chat: their turns end there too.
            if chat || prompts != nil, let id = encoder?.endOfTurnId() { stops.insert(id) }
            var options = SamplingOptions()
            options.temperature = temperature; options.topK = topK; options.topP = topP; options.seed = seed
            options.maxNewTokens = maxNewTokens
            let maxLength = min(loaded.model.config.maxPositionEmbeddings, 4096)
            if let prompts {
                try answerFile(prompts, loaded: loaded, adapters: adapters, format: format, encoder: encoder, stops: stops,
                               options: options, maxLength: maxLength)
                return
            }
            let generator = Generator(model: loaded.model, adapters: adapters, maxLength: maxLength, stopIds: stops,
                                      products: exact ? .exact : .fast)
            generator.ignoreStop = ignoreEos
            let tok = loaded.tokenizer
            defer { if !json { reportSpeed(generator.timings) } }
            func reply(to promptIDs: [Int32]) throws -> String {
                var ids: [Int32] = []
                var printed = ""
                _ = try generator.generate(prompt: promptIDs, options: options) { t in
                    ids.append(t)
                    // Decode the whole reply each time so multi-token characters print whole.
                    if !json, let text = try? tok.decode(ids), text.count > printed.count, text.hasPrefix(printed) {
                        FileHandle.standardOutput.write(Data(String(text.dropFirst(printed.count)).utf8))
                        printed = text
                    }
                }
                let text = (try? tok.decode(ids)) ?? printed
                if json { printJSON(speedFields(generator.timings, text: text)) } else { print("") }
                return text
            }
            if !chat {
                _ = try reply(to: tok.encode(prompt!, addSpecialTokens: true))
                return
            }
            let encodeTurns = { (messages: [ChatMessage]) throws -> [Int32] in
                try promptIds(messages, format: format, encoder: encoder, tokenizer: tok)
            }
            var messages: [ChatMessage] = []
            func turn(_ user: String) throws {
                messages.append(ChatMessage(role: "user", content: user))
                let answer = try reply(to: try encodeTurns(messages))
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

extension GenerateCommand {
    /// --prompts: every line's prompt through the batched generator, one JSON line each in
    /// the file's order, the speeds on standard error (or as the last line with --json).
    func answerFile(_ path: String, loaded: LoadedModel, adapters: AdapterSet?, format: ChatFormat, encoder: ChatEncoder?,
                    stops: Set<Int32>, options: SamplingOptions, maxLength: Int) throws {
        let tok = loaded.tokenizer
        let lines = try PromptFile.read(path, chat: { messages in
            try promptIds(messages, format: format, encoder: encoder, tokenizer: tok)
        }, plain: { text in
            chat ? try promptIds([ChatMessage(role: "user", content: text)], format: format, encoder: encoder, tokenizer: tok)
                 : try tok.encode(text, addSpecialTokens: true)
        })
        // Each slot's cache as long as the longest prompt and its new tokens need (within the cap).
        let length = min(maxLength, (lines.map(\.count).max() ?? 1) + options.maxNewTokens + 1)
        let lanes = parallel ?? defaultParallel(loaded.model.config, maxLength: length, requests: lines.count)
        let generator = BatchGenerator(model: loaded.model, adapters: adapters, maxLength: length, parallel: lanes,
                                       stopIds: stops, products: exact ? .exact : .fast)
        generator.ignoreStop = ignoreEos
        var results = [GenerationResult?](repeating: nil, count: lines.count)
        var next = 0
        try generator.run(lines.map { GenerationRequest(prompt: $0, options: options) }) { i, r in
            results[i] = r
            // In the file's order: print every finished answer up to the first unfinished one.
            while next < results.count, let done = results[next] {
                printJSON(["index": next, "text": (try? tok.decode(done.tokens)) ?? "", "tokens": done.tokens.count,
                           "finish_reason": done.reason.rawValue])
                next += 1
            }
        }
        if json { printJSON(speedFields(generator.timings, text: nil)) } else { reportSpeed(generator.timings) }
    }
}

/// A chat's prompt ids: the model's template (or the built-in one), ready for the reply.
func promptIds(_ messages: [ChatMessage], format: ChatFormat, encoder: ChatEncoder?, tokenizer tok: any TextTokenizer) throws -> [Int32] {
    switch format {
    case .jinja:
        return try encoder!.promptIds(messages)
    case let .builtin(template):
        return try tok.encode(try template.prompt(messages.map { ($0.role, $0.content ?? "") }), addSpecialTokens: true)
    }
}

/// The speed fields of `generate --json`, as llama.cpp's timings name them.
func speedFields(_ t: GenerationTimings, text: String?) -> [String: Any] {
    var o: [String: Any] = ["prompt_tokens": t.promptTokens, "prompt_tokens_per_s": t.promptTokensPerSecond,
                            "generated_tokens": t.generatedTokens, "tokens_per_s": t.tokensPerSecond,
                            "prompt_tokens_shared": t.sharedPromptTokens]
    if let text { o["text"] = text }
    return o
}

/// "prompt: N tokens, X tokens/s; decode: M tokens, Y tokens/s" on standard error, with
/// "(S shared)" after N when S of the prompts' tokens were copied from a shared prefix.
func reportSpeed(_ t: GenerationTimings) {
    let shared = t.sharedPromptTokens > 0 ? " (\(t.sharedPromptTokens) shared)" : ""
    let line = "prompt: \(t.promptTokens) tokens\(shared), " + String(format: "%.1f tokens/s; decode: %d tokens, %.1f tokens/s\n",
                      t.promptTokensPerSecond, t.generatedTokens, t.tokensPerSecond)
    FileHandle.standardError.write(Data(line.utf8))
}

/// One JSON object on a line of standard output (keys sorted, so lines compare).
func printJSON(_ object: [String: Any]) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}
