import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import Yams

/// Typed reading of one mapping of a YAML config, with errors that name the file, the
/// dotted key and the line (or "--set" for a command-line override). Every accessor
/// registers its key as known, so `finish()` can refuse unknown keys and suggest the
/// nearest known one. Sections are decoded by a list of accessor calls: the schema.
package final class ConfigReader {
    package let file: String
    package let prefix: String
    /// Each key with its own node (for the line a message names) and its value.
    private let entries: [(key: String, keyNode: Node, node: Node)]
    private let overridden: Set<String>
    private var known: [String] = []

    package init(file: String, prefix: String, node: Node?, overridden: Set<String>) throws {
        self.file = file
        self.prefix = prefix
        self.overridden = overridden
        switch node {
        case nil:
            entries = []
        case .scalar(_) where node?.null != nil:   // "section:" with nothing under it
            entries = []
        case .mapping(let m):
            entries = try m.map { pair in
                guard let k = pair.key.string else {
                    throw MoETuneError.config(path: file, key: prefix.isEmpty ? "?" : String(prefix.dropLast()),
                                              message: "\(ConfigReader.where(pair.key)): keys must be strings")
                }
                return (k, pair.key, pair.value)
            }
        default:
            throw MoETuneError.config(path: file, key: String(prefix.dropLast()),
                                      message: "\(ConfigReader.where(node!)): expected a mapping of keys")
        }
    }

    package static func `where`(_ node: Node) -> String {
        node.mark.map { "line \($0.line)" } ?? "--set"
    }

    /// Where a key's value came from: the key's line in the file (also when its value is a
    /// block on the following lines), "--set", or "default" when absent.
    package func location(_ key: String) -> String {
        if overridden.contains(prefix + key) { return "--set" }
        return entries.last { $0.key == key }.map { ConfigReader.where($0.keyNode) } ?? "default"
    }

    package func fail(_ key: String, _ message: String) -> MoETuneError {
        let at = location(key)
        return .config(path: file, key: prefix + key, message: at == "default" ? message : "\(at): \(message)")
    }

    package func node(_ key: String) -> Node? {
        entries.last { $0.key == key }?.node
    }

    private func value(_ key: String) -> Node? {
        known.append(key)
        guard let n = node(key), n.null == nil else { return nil }
        return n
    }

    /// The text of an unquoted scalar: only those are numbers or booleans.
    private func plain(_ n: Node) -> String? {
        guard case .scalar(let s) = n, s.style == .plain || s.style == .any else { return nil }
        return s.string
    }

    package func optionalInt(_ key: String) throws -> Int? {
        guard let n = value(key) else { return nil }
        guard let text = plain(n), let v = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw fail(key, "expected an integer, got \(describe(n))")
        }
        return v
    }

    package func int(_ key: String, default d: Int) throws -> Int { try optionalInt(key) ?? d }

    package func optionalDouble(_ key: String) throws -> Double? {
        guard let n = value(key) else { return nil }
        // Double() also takes 1e-4, which YAML 1.1 would leave a string.
        guard let text = plain(n), let v = Double(text.replacingOccurrences(of: "_", with: "")), v.isFinite else {
            throw fail(key, "expected a number, got \(describe(n))")
        }
        return v
    }

    package func double(_ key: String, default d: Double) throws -> Double { try optionalDouble(key) ?? d }

    package func bool(_ key: String, default d: Bool) throws -> Bool {
        guard let n = value(key) else { return d }
        switch plain(n)?.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw fail(key, "expected true or false, got \(describe(n))")
        }
    }

    package func optionalString(_ key: String) throws -> String? {
        guard let n = value(key) else { return nil }
        guard case .scalar(let s) = n else { throw fail(key, "expected a string, got \(describe(n))") }
        return s.string
    }

    package func string(_ key: String, required: Bool = true) throws -> String {
        guard let s = try optionalString(key) else { throw fail(key, "required key is missing") }
        return s
    }

    /// One of a fixed set of names, with a suggestion when misspelt.
    package func choice(_ key: String, _ options: [String], default d: String) throws -> String {
        guard let s = try optionalString(key) else { return d }
        guard options.contains(s) else {
            throw fail(key, "unknown value \"\(s)\"; expected one of \(options.joined(separator: ", "))" + suggestion(s, options))
        }
        return s
    }

    /// Like `choice`, nil when absent or null.
    package func optionalChoice(_ key: String, _ options: [String]) throws -> String? {
        guard try optionalString(key) != nil else { return nil }
        return try choice(key, options, default: "")
    }

    /// The raw node of a key with a custom shape (lists, "all"-or-number, sub-mappings).
    package func raw(_ key: String) -> Node? { value(key) }

    /// A sub-section's reader.
    package func section(_ key: String) throws -> ConfigReader {
        known.append(key)
        return try ConfigReader(file: file, prefix: prefix + key + ".", node: node(key), overridden: overridden)
    }

    /// Refuses keys no accessor asked for.
    package func finish() throws {
        for (key, keyNode, _) in entries where !known.contains(key) {
            throw MoETuneError.config(path: file, key: prefix + key,
                message: "\(overridden.contains(prefix + key) ? "--set" : ConfigReader.where(keyNode)): unknown key"
                    + suggestion(key, known, withPrefix: prefix))
        }
    }

    package func describe(_ n: Node) -> String {
        switch n {
        case .scalar(let s): return "\"\(s.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}
