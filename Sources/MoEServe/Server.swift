import Foundation
import Hummingbird
import Logging
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// The model's text side, shared by request handlers on several threads: encoding prompts
/// (with the chat template) and decoding replies, one at a time.
package final class TextSide: @unchecked Sendable {
    private let lock = NSLock()
    private let tokenizer: any TextTokenizer
    private let format: ChatFormat
    private let encoder: ChatEncoder?

    package init(tokenizer: any TextTokenizer, format: ChatFormat) {
        self.tokenizer = tokenizer
        self.format = format
        if case let .jinja(renderer) = format { encoder = ChatEncoder(renderer: renderer, tokenizer: tokenizer) } else { encoder = nil }
    }

    /// The chat template's end-of-turn token, if it has one (a reply stops there).
    package var endOfTurnId: Int32? { lock.withLock { encoder?.endOfTurnId() } }

    package func promptIds(_ input: CompletionRequest.Input) throws -> [Int32] {
        try lock.withLock {
            switch (input, format) {
            case let (.text(s), _): return try tokenizer.encode(s, addSpecialTokens: true)
            case let (.chat(m), .jinja): return try encoder!.promptIds(m)
            case let (.chat(m), .builtin(template)):
                return try tokenizer.encode(try template.prompt(m.map { ($0.role, $0.content ?? "") }), addSpecialTokens: true)
            }
        }
    }

    package func decode(_ ids: [Int32]) -> String { lock.withLock { (try? tokenizer.decode(ids)) ?? "" } }
}

/// What `moe-tune serve` was asked for.
package struct ServeOptions: Sendable {
    package var host = "127.0.0.1"
    package var port = 8080
    /// The name `model` takes for the base alone.
    package var baseName = "base"
    /// Largest request body read.
    package var maxBodyBytes = 8 << 20
    package init() {}
}

/// An OpenAI-compatible HTTP server over the Engine: `POST /v1/chat/completions`,
/// `POST /v1/completions` (streamed as server-sent events with `"stream": true`),
/// `GET /v1/models`, `GET /health`. Every failure of a request is answered with OpenAI's
/// error object; none stops the server.
package struct OpenAIServer: Sendable {
    package let engine: Engine
    package let text: TextSide
    package let options: ServeOptions
    private let created = Int(Date().timeIntervalSince1970)

    package init(engine: Engine, text: TextSide, options: ServeOptions) {
        self.engine = engine
        self.text = text
        self.options = options
    }

    /// Serves until SIGINT or SIGTERM; `ready` gets the bound port (useful with port 0).
    package func run(ready: @escaping @Sendable (Int) -> Void) async throws {
        let router = Router()
        router.get("health") { _, _ in json(["status": "ok"]) }
        router.get("v1/models") { _, _ in json(models()) }
        router.post("v1/chat/completions") { request, _ in await complete(request, chat: true) }
        router.post("v1/completions") { request, _ in await complete(request, chat: false) }
        var logger = Logger(label: "moe-tune")
        logger.logLevel = .warning   // our own line says where it listens; one line per request follows
        let app = Application(router: router,
                              configuration: .init(address: .hostname(options.host, port: options.port), serverName: "moe-tune"),
                              onServerRunning: { channel in ready(channel.localAddress?.port ?? options.port) },
                              logger: logger)
        engine.start()
        try await app.runService()
    }

    private func models() -> [String: Any] {
        ["object": "list", "data": engine.names.map { ["id": $0, "object": "model", "created": created, "owned_by": "moe-tune"] }]
    }

    private func complete(_ request: Request, chat: Bool) async -> Response {
        var request = request
        do {
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: options.maxBodyBytes) } catch {
                throw APIError(status: 413, message: "the request body is larger than \(options.maxBodyBytes) bytes",
                               type: "invalid_request_error")
            }
            let req = try CompletionRequest.parse(String(buffer: body), chat: chat)
            let job = try prepare(req)
            let (id, events) = engine.submit(job.generation, model: job.model)
            let reply = Reply(id: (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased(), chat: chat, created: created,
                              model: job.model, promptTokens: job.generation.prompt.count)
            if req.stream { return stream(reply, events: events, engineId: id, stops: req.stop, usage: req.includeUsage) }
            return try await whole(reply, events: events, engineId: id, stops: req.stop)
        } catch let e as APIError {
            return json(e.body, status: e.status)
        } catch {
            return json(APIError(status: 500, message: "\(error)", type: "server_error").body, status: 500)
        }
    }

    /// The engine's request: the model's name checked, the prompt encoded and measured
    /// against the context, the sampling options.
    private func prepare(_ req: CompletionRequest) throws -> (model: String, generation: GenerationRequest) {
        let name = req.model ?? options.baseName
        guard engine.names.contains(name) else {
            throw APIError(status: 404, message: "The model `\(Printable.text(name, limit: 200))` does not exist; served: \(engine.names.joined(separator: ", "))",
                           type: "invalid_request_error", param: "model", code: "model_not_found")
        }
        let prompt: [Int32]
        do { prompt = try text.promptIds(req.input) } catch {
            throw APIError.invalid("the prompt cannot be encoded: \(error)", param: req.isChat ? "messages" : "prompt")
        }
        guard !prompt.isEmpty else { throw APIError.invalid("the prompt encodes to no tokens", param: "prompt") }
        let room = engine.maxLength - prompt.count
        guard room >= 1 else {
            throw APIError.invalid("the prompt has \(prompt.count) tokens; this server's context is \(engine.maxLength) tokens (--ctx-size)",
                                   param: req.isChat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        var o = SamplingOptions()
        o.temperature = req.temperature; o.topP = req.topP; o.topK = req.topK
        o.seed = req.seed ?? UInt64.random(in: 0...UInt64.max)
        o.maxNewTokens = min(req.maxTokens ?? room, room)
        return (name, GenerationRequest(prompt: prompt, options: o))
    }

    /// A non-streamed answer: every token, then one JSON object.
    private func whole(_ reply: Reply, events: AsyncStream<EngineEvent>, engineId: Int, stops: [String]) async throws -> Response {
        var textStream = TextStream(stops: stops) { text.decode($0) }
        var tokens = 0, cached = 0
        var finish = "length"
        try await withTaskCancellationHandler {
            loop: for await event in events {
                switch event {
                case let .admitted(c): cached = c
                case let .token(t):
                    tokens += 1
                    _ = textStream.add(t)
                    if textStream.stopped { engine.cancel(engineId); finish = "stop"; break loop }
                case let .finished(r): finish = r.reason == .stop ? "stop" : "length"; _ = textStream.finish()
                case let .failed(message): throw APIError(status: 500, message: message, type: "server_error")
                }
            }
        } onCancel: { engine.cancel(engineId) }
        reply.log(finish: finish, completionTokens: tokens, cached: cached)
        return json(reply.whole(text: textStream.text, finish: finish, completionTokens: tokens, cached: cached))
    }

    /// A streamed answer: server-sent events, one per piece of text, then `[DONE]`.
    private func stream(_ reply: Reply, events: AsyncStream<EngineEvent>, engineId: Int, stops: [String], usage: Bool) -> Response {
        let engine = engine, text = text
        let body = ResponseBody { writer in
            var textStream = TextStream(stops: stops) { text.decode($0) }
            var tokens = 0, cached = 0
            do {
                if reply.chat { try await writer.write(sse(reply.chunk(role: true, text: "", finish: nil))) }
                loop: for await event in events {
                    var piece = "", finish: String?
                    switch event {
                    case let .admitted(c): cached = c
                    case let .token(t):
                        tokens += 1
                        piece = textStream.add(t)
                        if textStream.stopped { engine.cancel(engineId); finish = "stop" }
                    case let .finished(r): piece = textStream.finish(); finish = r.reason == .stop ? "stop" : "length"
                    case let .failed(message):
                        try await writer.write(sse(APIError(status: 500, message: message, type: "server_error").body))
                        break loop
                    }
                    if !piece.isEmpty { try await writer.write(sse(reply.chunk(text: piece, finish: nil))) }
                    if let finish {
                        reply.log(finish: finish, completionTokens: tokens, cached: cached)
                        try await writer.write(sse(reply.chunk(text: "", finish: finish)))
                        if usage { try await writer.write(sse(reply.usageChunk(completionTokens: tokens, cached: cached))) }
                        break loop
                    }
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                engine.cancel(engineId)   // the client hung up
                reply.log(finish: "client-left", completionTokens: tokens, cached: cached)
                throw error
            }
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: body)
    }
}

/// The fixed parts of one request's answer and the JSON shapes OpenAI gives them.
struct Reply: Sendable {
    let id: String
    let chat: Bool
    let created: Int
    let model: String
    let promptTokens: Int

    let start = Date()

    private var object: String { chat ? "chat.completion" : "text_completion" }

    /// One line on standard error per answered request.
    func log(finish: String, completionTokens: Int, cached: Int) {
        let seconds = String(format: "%.2f", Date().timeIntervalSince(start))
        let line = "moe-tune serve: \(chat ? "chat" : "completion") model=\(model) prompt=\(promptTokens) cached=\(cached) "
            + "completion=\(completionTokens) finish=\(finish) \(seconds) s\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// OpenAI's usage object; prompt_tokens_details.cached_tokens: the prompt tokens a cached
    /// prefix spared (BatchGenerator's shared and kept prefixes).
    func usage(_ completionTokens: Int, cached: Int) -> [String: Any] {
        ["prompt_tokens": promptTokens, "completion_tokens": completionTokens, "total_tokens": promptTokens + completionTokens,
         "prompt_tokens_details": ["cached_tokens": cached]]
    }

    func whole(text: String, finish: String, completionTokens: Int, cached: Int) -> [String: Any] {
        let choice: [String: Any] = chat
            ? ["index": 0, "message": ["role": "assistant", "content": text], "logprobs": NSNull(), "finish_reason": finish]
            : ["index": 0, "text": text, "logprobs": NSNull(), "finish_reason": finish]
        return ["id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage(completionTokens, cached: cached)]
    }

    func chunk(role: Bool = false, text: String, finish: String?) -> [String: Any] {
        var choice: [String: Any] = ["index": 0, "logprobs": NSNull(), "finish_reason": finish ?? NSNull()]
        if chat {
            var delta: [String: Any] = [:]
            if role { delta["role"] = "assistant" }
            if role || !text.isEmpty { delta["content"] = text }
            choice["delta"] = delta
        } else {
            choice["text"] = text
        }
        return ["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created, "model": model,
                "choices": [choice]]
    }

    func usageChunk(completionTokens: Int, cached: Int) -> [String: Any] {
        ["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created, "model": model,
         "choices": [Any](), "usage": usage(completionTokens, cached: cached)]
    }
}

func jsonText(_ object: [String: Any]) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
}

func sse(_ object: [String: Any]) -> ByteBuffer { ByteBuffer(string: "data: " + jsonText(object) + "\n\n") }

func json(_ object: [String: Any], status: Int = 200) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: .init(code: status), headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: jsonText(object))))
}
