import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoEServe

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a model (and adapters) over an OpenAI-compatible HTTP API.",
        discussion: """
        POST /v1/chat/completions and /v1/completions (streamed as server-sent events with "stream": true), \
        GET /v1/models, GET /health. The request's "model" picks the base (--alias, default the model's \
        file or folder name) or an adapter (--adapter NAME=DIR); requests for one name decode together \
        (continuous batching, --parallel at once). Listens on 127.0.0.1 unless --host says otherwise. \
        See docs/serving.md.
        """)

    @Option(help: "Model folder or GGUF file.") var model: String
    @Option(help: "An adapter to serve as its own model: NAME=DIR, or DIR (named after its folder). Repeatable.") var adapter: [String] = []
    @Option(help: "The base model's name in requests and /v1/models (default: the model's file or folder name).") var alias: String?
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: "Port to listen on (0: any free port, printed when ready).") var port = 8080
    @Option(name: .customLong("ctx-size"), parsing: .unconditional, help: "Tokens per sequence, prompt and reply (default: the model's, at most 4096).") var ctxSize: Int?
    @Option(parsing: .unconditional, help: "Sequences decoded at once per served model (default 8, fewer if their KV caches would pass a quarter of the memory).") var parallel: Int?
    @Option(help: "Chat format: default the model's own template; \"llama2\", a .jinja file, or a {user}/{assistant} turn.") var chatTemplate: String?
    @Option(help: "Quantize the base weights while loading: nf4.") var quantize: String?
    @Option(name: .customLong("base-dtype"), help: "Hold the frozen base in: fp32, bf16, bf16-emulated.") var baseDType = "fp32"
    @Flag(help: "Multiply as training does (weights widened to fp32): slower, the reference tokens.") var exact = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, got \(port)") }
        if let ctxSize, ctxSize < 2 { throw ValidationError("--ctx-size must be at least 2, got \(ctxSize)") }
        if let parallel, !(1...256).contains(parallel) { throw ValidationError("--parallel must be in 1...256, got \(parallel)") }
        if let quantize, quantize != "nf4" { throw ValidationError("--quantize supports nf4 only") }
        _ = try parseBaseDType(baseDType)
        _ = try adapterNames()
    }

    /// (name, folder) of each --adapter; names unique and not the base's.
    func adapterNames() throws -> [(String, String)] {
        var seen: Set<String> = [baseName]
        return try adapter.map { a in
            let parts = a.split(separator: "=", maxSplits: 1).map(String.init)
            let (name, dir) = parts.count == 2 && !parts[0].isEmpty ? (parts[0], parts[1])
                : (URL(fileURLWithPath: a).standardizedFileURL.lastPathComponent, a)
            guard seen.insert(name).inserted else { throw ValidationError("--adapter \(a): the name \(name) is taken; give NAME=DIR") }
            return (name, dir)
        }
    }

    var baseName: String {
        if let alias { return alias }
        let last = URL(fileURLWithPath: model).standardizedFileURL.lastPathComponent
        return last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }

    func run() throws {
        try runReportingErrors {
            let base = try parseBaseDType(baseDType)
            noteBaseDType(base)
            let loaded = try LoadedModel.load(directory: model, quantize: quantize == nil ? nil : QuantizationSpec(doubleQuant: true), base: base)
            var served: [String: AdapterSet?] = [baseName: nil]
            for (name, dir) in try adapterNames() { served[name] = try PEFTAdapter.load(directory: dir, model: loaded.model) }
            let format = try ChatFormat.resolve(chatTemplate, modelDirectory: model)
            let text = TextSide(tokenizer: loaded.tokenizer, format: format)
            var stops = loaded.tokenizer.stopIds
            if let id = text.endOfTurnId { stops.insert(id) }
            let ctx = min(ctxSize ?? min(loaded.model.config.maxPositionEmbeddings, 4096), loaded.model.config.maxPositionEmbeddings)
            let lanes = parallel ?? defaultParallel(loaded.model.config, maxLength: ctx)
            let engine = Engine(model: loaded.model, adapters: served, maxLength: ctx, parallel: lanes, stopIds: stops,
                                products: exact ? .exact : .fast)
            var options = ServeOptions()
            options.host = host; options.port = port; options.baseName = baseName
            try serve(OpenAIServer(engine: engine, text: text, options: options), models: served.keys.sorted(), ctx: ctx, lanes: lanes)
        }
    }

    /// Runs the server on Swift's concurrency threads while this thread waits for its end.
    private func serve(_ server: OpenAIServer, models: [String], ctx: Int, lanes: Int) throws {
        if !["127.0.0.1", "localhost", "::1"].contains(host) {
            FileHandle.standardError.write(Data("moe-tune: warning: listening on \(host): anyone who can reach it can use the models\n".utf8))
        }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error?
        let host = host
        Task {
            do {
                try await server.run { port in
                    let line = "moe-tune serve: listening on http://\(host):\(port) (models: \(models.joined(separator: ", ")); context \(ctx) tokens, \(lanes) at once)\n"
                    FileHandle.standardError.write(Data(line.utf8))
                }
            } catch { failure = error }
            done.signal()
        }
        done.wait()
        if let failure { throw MoETuneError.invalid("serve: \(host):\(port): \(failure)") }
    }
}
