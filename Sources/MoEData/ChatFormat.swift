import Foundation
import MoEFormats
import MoEText
import MoECore

/// How {"messages": ...} lines become text and tokens: a Jinja chat template (the model's
/// own, or a .jinja file), or one of the built-in formats of `ChatTemplate`.
///
/// `data.chat_template` / `--chat-template`:
/// - null: the model folder's template (chat_template.jinja or tokenizer_config.json's
///   chat_template) when it has one, else the built-in Llama-2 `[INST]` format;
/// - "llama2": the built-in Llama-2 `[INST]` format whatever the folder has;
/// - a path to a `.jinja` file (or any existing file): that Jinja template, with the special
///   tokens (bos_token, eos_token, …) of the model folder's tokenizer_config.json;
/// - otherwise one turn with `{user}` and `{assistant}` (the built-in custom format).
public enum ChatFormat: @unchecked Sendable {
    case builtin(ChatTemplate)
    case jinja(ChatTemplateRenderer)

    public static let `default` = ChatFormat.builtin(.llama2)

    public static func resolve(_ setting: String?, modelDirectory: String) throws -> ChatFormat {
        guard let setting else {
            if let r = try ChatTemplateRenderer.load(modelDirectory: modelDirectory) { return .jinja(r) }
            return .default
        }
        if setting == "llama2" { return .default }
        if setting.hasSuffix(".jinja") || (!setting.contains("{user}") && FileManager.default.fileExists(atPath: setting)) {
            guard let data = FileManager.default.contents(atPath: setting) else {
                throw MoETuneError.file(path: setting, message: "chat template file not found")
            }
            guard let source = String(data: data, encoding: .utf8) else { throw MoETuneError.file(path: setting, message: "not UTF-8") }
            do {
                return .jinja(try ChatTemplateRenderer(template: source, specialTokens: try specialTokens(modelDirectory: modelDirectory)))
            } catch let e as MoETuneError {
                throw MoETuneError.file(path: setting, message: e.description)
            }
        }
        return .builtin(try ChatTemplate.custom(setting))
    }

    /// Whether a config value names a known kind of chat template (checked when a config is read).
    public static func isValidSetting(_ setting: String) -> Bool {
        setting == "llama2" || setting.hasSuffix(".jinja") || (try? ChatTemplate.custom(setting)) != nil
            || FileManager.default.fileExists(atPath: setting)
    }

    /// bos_token, eos_token, … of DIR/tokenizer_config.json (strings or {"content": …}).
    package static func specialTokens(modelDirectory dir: String) throws -> [String: String] {
        if GGUFFile.isGGUFPath(dir) { return try GGUFTokenizer.specialTokens(GGUFFile(path: dir)) }
        let path = (dir as NSString).appendingPathComponent("tokenizer_config.json")
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        guard let text = String(data: data, encoding: .utf8), case let .dict(d) = try? JinjaJSON.parse(text) else {
            throw MoETuneError.file(path: path, message: "not a JSON object")
        }
        return try ChatTemplateRenderer.specialTokens(d, path: path)
    }

    /// A one-line description for logs: "the model's Jinja template" or the built-in name.
    public var summary: String {
        switch self {
        case .jinja: return "Jinja chat template"
        case let .builtin(t): return t.turn == nil ? "built-in Llama-2 [INST] format" : "custom {user}/{assistant} format"
        }
    }
}
