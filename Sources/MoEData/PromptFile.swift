import Foundation
import MoEFormats
import MoEText
import MoECore

/// The prompts of `generate --prompts FILE.jsonl`: each line {"prompt": TEXT}, or a chat as
/// {"messages": [...]} (or {"prompt": [...messages]}) rendered with the model's template.
public enum PromptFile {
    /// Token ids of every line, in order: `plain` encodes a text prompt, `chat` a list of
    /// messages. Errors name the file and line.
    public static func read(_ path: String, chat: ([ChatMessage]) throws -> [Int32],
                            plain: (String) throws -> [Int32]) throws -> [[Int32]] {
        let rows = try JSONL.readObjectsWithText(path: path)
        guard !rows.isEmpty else { throw MoETuneError.file(path: path, message: "holds no prompt") }
        return try rows.map { row in
            do {
                return try ids(row.object, text: row.text, chat: chat, plain: plain)
            } catch let e as MoETuneError {
                if case .line = e { throw e }
                throw MoETuneError.line(path: path, line: row.line, message: "\(e)")
            }
        }
    }

    private static func ids(_ object: [String: Any], text: String, chat: ([ChatMessage]) throws -> [Int32],
                            plain: (String) throws -> [Int32]) throws -> [Int32] {
        if let p = object["prompt"] as? String {
            guard !p.isEmpty else { throw MoETuneError.invalid("\"prompt\" is empty") }
            return try plain(p)
        }
        // Parsed again as Jinja values so that the messages keep their key order.
        guard case let .dict(row) = try JinjaValue.fromJSON(text),
              case let .list(items)? = row["messages"] ?? row["prompt"], !items.isEmpty else {
            throw MoETuneError.invalid("expected \"prompt\" (a string) or \"messages\" (a non-empty list of messages)")
        }
        let messages = try items.enumerated().map { i, item in
            do { return try ChatMessage(item) } catch {
                throw MoETuneError.invalid("messages[\(i)] must be an object with a string \"role\"")
            }
        }
        return try chat(messages)
    }
}
