import Foundation
import MoEFormats
import MoEText

/// An error as the OpenAI API returns it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
package struct APIError: Error, Equatable {
    package var status: Int
    package var message: String
    package var type: String
    package var param: String?
    package var code: String?

    package static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: 400, message: message, type: "invalid_request_error", param: param, code: code)
    }

    package var body: [String: Any] {
        ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
    }
}

/// A `POST /v1/chat/completions` or `/v1/completions` body, checked: what to continue and how
/// to pick tokens. Fields a CPU server has no use for (`user`, `frequency_penalty: 0`, …) are
/// ignored, as OpenAI-compatible servers do; those that would change the answer and are not
/// supported (`n` above 1, `logprobs`) are refused.
package struct CompletionRequest {
    package enum Input { case chat([ChatMessage]), text(String) }

    package var model: String?
    package var input: Input
    package var stream = false
    package var includeUsage = false
    /// nil: until a stop, or the context's end.
    package var maxTokens: Int?
    /// OpenAI's defaults: temperature 1, top_p 1.
    package var temperature = 1.0
    package var topP = 1.0
    package var topK = 0
    package var seed: UInt64?
    package var stop: [String] = []

    package var isChat: Bool { if case .chat = input { return true } else { return false } }

    /// Parses a request body; `chat` selects the chat endpoint's `messages` over `prompt`.
    package static func parse(_ body: String, chat: Bool) throws(APIError) -> CompletionRequest {
        let value: JinjaValue
        do { value = try JinjaValue.fromJSON(body) } catch {
            throw .invalid("the request body is not valid JSON: \(Printable.text("\(error)", limit: 200))")
        }
        guard case let .dict(o) = value else { throw .invalid("the request body must be a JSON object") }
        let input = chat ? Input.chat(try messages(o["messages"])) : Input.text(try prompt(o["prompt"]))
        var r = CompletionRequest(input: input)
        r.model = try string(o["model"], "model")
        r.stream = try bool(o["stream"], "stream") ?? false
        if case let .dict(so)? = o["stream_options"] { r.includeUsage = try bool(so["include_usage"], "stream_options.include_usage") ?? false }
        let maxCompletion = try int(o["max_completion_tokens"], "max_completion_tokens", min: 1)
        let maxPlain = try int(o["max_tokens"], "max_tokens", min: 1)
        r.maxTokens = maxCompletion ?? maxPlain
        r.temperature = try number(o["temperature"], "temperature", in: 0...2) ?? 1
        r.topP = try number(o["top_p"], "top_p", in: 0...1) ?? 1
        guard r.topP > 0 else { throw .invalid("top_p must be above 0", param: "top_p") }
        r.topK = try int(o["top_k"], "top_k", min: 0) ?? 0
        if let s = try int(o["seed"], "seed", min: Int.min) { r.seed = UInt64(bitPattern: Int64(s)) }
        r.stop = try stops(o["stop"])
        if let n = try int(o["n"], "n", min: 1), n != 1 { throw .invalid("n must be 1 (one choice per request)", param: "n") }
        if try bool(o["logprobs"], "logprobs") == true { throw .invalid("logprobs is not supported", param: "logprobs") }
        if chat, let e = o["echo"], !isNull(e) { throw .invalid("echo is not supported", param: "echo") }
        return r
    }

    /// Chat messages; a content given as parts (`[{"type": "text", "text": …}]`) becomes their text.
    private static func messages(_ v: JinjaValue?) throws(APIError) -> [ChatMessage] {
        guard case let .list(items)? = v, !items.isEmpty else {
            throw .invalid("messages must be a non-empty array of {\"role\", \"content\"}", param: "messages")
        }
        var out: [ChatMessage] = []
        for (i, item) in items.enumerated() {
            guard case var .dict(d) = item, case .string? = d["role"] else {
                throw .invalid("messages[\(i)] must be an object with a string \"role\"", param: "messages")
            }
            if case let .list(parts)? = d["content"] { d["content"] = .string(try text(parts, message: i)) }
            guard let m = try? ChatMessage(.dict(d)) else { throw .invalid("messages[\(i)] is not a message", param: "messages") }
            out.append(m)
        }
        return out
    }

    private static func text(_ parts: [JinjaValue], message i: Int) throws(APIError) -> String {
        var s = ""
        for p in parts {
            guard case let .dict(d) = p, case .string("text")? = d["type"], case let .string(t)? = d["text"] else {
                throw .invalid("messages[\(i)].content: only text parts are supported", param: "messages")
            }
            s += t
        }
        return s
    }

    private static func prompt(_ v: JinjaValue?) throws(APIError) -> String {
        switch v {
        case let .string(s)?: guard !s.isEmpty else { break }; return s
        case let .list(items)? where items.count == 1: if case let .string(s) = items[0], !s.isEmpty { return s }
        default: break
        }
        throw .invalid("prompt must be a non-empty string (one prompt per request)", param: "prompt")
    }

    private static func stops(_ v: JinjaValue?) throws(APIError) -> [String] {
        switch v {
        case nil, .none?: return []
        case let .string(s)?: return s.isEmpty ? [] : [s]
        case let .list(items)? where items.count <= 4:
            var out: [String] = []
            for item in items {
                guard case let .string(s) = item else { throw .invalid("stop must be a string or up to 4 strings", param: "stop") }
                if !s.isEmpty { out.append(s) }
            }
            return out
        default: throw .invalid("stop must be a string or up to 4 strings", param: "stop")
        }
    }

    private static func isNull(_ v: JinjaValue) -> Bool { if case .none = v { return true } else { return false } }

    private static func string(_ v: JinjaValue?, _ name: String) throws(APIError) -> String? {
        switch v {
        case nil, .none?: return nil
        case let .string(s)?: return s
        default: throw .invalid("\(name) must be a string", param: name)
        }
    }

    private static func bool(_ v: JinjaValue?, _ name: String) throws(APIError) -> Bool? {
        switch v {
        case nil, .none?: return nil
        case let .bool(b)?: return b
        default: throw .invalid("\(name) must be true or false", param: name)
        }
    }

    private static func int(_ v: JinjaValue?, _ name: String, min: Int) throws(APIError) -> Int? {
        switch v {
        case nil, .none?: return nil
        case let .int(i)? where i >= min: return i
        case .int?: throw .invalid("\(name) must be at least \(min)", param: name)
        default: throw .invalid("\(name) must be an integer", param: name)
        }
    }

    private static func number(_ v: JinjaValue?, _ name: String, in range: ClosedRange<Double>) throws(APIError) -> Double? {
        let x: Double
        switch v {
        case nil, .none?: return nil
        case let .int(i)?: x = Double(i)
        case let .float(f)?: x = f
        default: throw .invalid("\(name) must be a number", param: name)
        }
        guard range.contains(x) else { throw .invalid("\(name) must be in \(range.lowerBound)...\(range.upperBound), got \(x)", param: name) }
        return x
    }
}
