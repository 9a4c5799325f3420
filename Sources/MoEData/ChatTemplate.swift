import MoEFormats
import MoEText
import MoECore
/// Renders {"messages": [...]} conversations into tokens with a loss mask: only the
/// assistant turns (and the EOS closing each) count, unless train_on_inputs.
///
/// The default is the Llama-2 / Mistral instruction format:
///   <s>[INST] {user} [/INST] {assistant}</s>[INST] {user} [/INST] {assistant}</s>
/// with a system message folded into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n".
/// A custom template is one turn with the placeholders {user} and {assistant}, e.g.
///   "<|user|>\n{user}\n<|assistant|>\n{assistant}\n"
/// repeated per user/assistant pair; the text up to {assistant} is prompt, {assistant}
/// and the rest of the turn count. A system message is prepended to the first user
/// message, separated by a blank line.
public struct ChatTemplate: Equatable, Sendable {
    public let turn: String?

    public static let llama2 = ChatTemplate(turn: nil)

    public init(turn: String?) { self.turn = turn }

    /// Validates a custom template string.
    public static func custom(_ template: String) throws -> ChatTemplate {
        guard let u = template.range(of: "{user}"), let a = template.range(of: "{assistant}"), u.upperBound <= a.lowerBound else {
            throw MoETuneError.invalid("chat_template must contain {user} followed by {assistant}")
        }
        return ChatTemplate(turn: template)
    }

    /// Segments of a conversation: (text, counted?, ends with EOS?).
    package func segments(_ messages: [(role: String, content: String)]) throws -> [(text: String, counted: Bool, eos: Bool)] {
        var system: String?
        var out: [(String, Bool, Bool)] = []
        var pendingUser: String?
        for (role, content) in messages {
            switch role {
            case "system":
                guard out.isEmpty, pendingUser == nil, system == nil else {
                    throw MoETuneError.invalid("a system message may only come first")
                }
                system = content
            case "user":
                guard pendingUser == nil else { throw MoETuneError.invalid("two user messages in a row") }
                var text = content
                if let s = system, out.isEmpty {
                    text = turn == nil ? "<<SYS>>\n\(s)\n<</SYS>>\n\n\(content)" : "\(s)\n\n\(content)"
                }
                pendingUser = text
            case "assistant":
                guard let user = pendingUser else { throw MoETuneError.invalid("an assistant message must follow a user message") }
                pendingUser = nil
                if let turn {
                    let a = turn.range(of: "{assistant}")!
                    let head = String(turn[..<a.lowerBound]).replacingOccurrences(of: "{user}", with: user)
                    let tail = String(turn[a.upperBound...])
                    out.append((head, false, false))
                    out.append((content + tail, true, false))
                } else {
                    out.append(("[INST] \(user) [/INST]", false, false))
                    out.append((" " + content, true, true))
                }
            default:
                throw MoETuneError.invalid("unknown role \"\(role)\" (expected system, user or assistant)")
            }
        }
        guard pendingUser == nil else { throw MoETuneError.invalid("the conversation ends with a user message and no assistant reply") }
        guard !out.isEmpty else { throw MoETuneError.invalid("the conversation has no assistant reply") }
        if turn != nil, let last = out.indices.last { out[last].2 = true }
        return out
    }

    /// Renders the prompt of a conversation whose last message is from the user, for
    /// generation: everything up to where the assistant's reply begins.
    public func prompt(_ messages: [(role: String, content: String)]) throws -> String {
        let closed = messages + [("assistant", "")]
        let segs = try segments(closed)
        return segs.dropLast().map(\.text).joined()
    }
}
