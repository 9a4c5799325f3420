import Foundation
import MoEFormats

/// Typed access to a parsed tokenizer.json (JSONParser values) (or tokenizer_config.json) with one-line errors
/// that name the file and the key: "PATH: pre_tokenizer.pretokenizers[0]: ...".
package struct JSONReader {
    package let path: String

    package func fail(_ key: String, _ message: String) -> MoETuneError { .file(path: path, message: "\(key): \(message)") }
    package func unsupported(_ key: String, _ type: String) -> MoETuneError {
        .file(path: path, message: "\(key) type \(Printable.quoted(type)) is not supported")
    }

    package static func parse(path: String) throws -> [String: Any] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MoETuneError.file(path: path, message: "cannot read: \(error.localizedDescription)")
        }
        guard let obj = try? JSONParser.parse(Array(data)), let dict = obj as? [String: Any] else {
            throw MoETuneError.file(path: path, message: "not a JSON object")
        }
        return dict
    }

    package func optionalObject(_ v: Any?, _ key: String) throws -> [String: Any]? {
        guard let v, !(v is JSONNull) else { return nil }
        guard let o = v as? [String: Any] else { throw fail(key, "must be an object or null") }
        return o
    }
    package func object(_ o: [String: Any], _ k: String, _ key: String) throws -> [String: Any] {
        guard let v = try optionalObject(o[k], "\(key).\(k)") else { throw fail("\(key).\(k)", "missing") }
        return v
    }
    package func string(_ o: [String: Any], _ k: String, _ key: String) throws -> String {
        guard let s = o[k] as? String else { throw fail("\(key).\(k)", o[k] == nil ? "missing" : "must be a string") }
        return s
    }
    package func optionalString(_ o: [String: Any], _ k: String, _ key: String) throws -> String? {
        guard let v = o[k], !(v is JSONNull) else { return nil }
        guard let s = v as? String else { throw fail("\(key).\(k)", "must be a string or null") }
        return s
    }
    package func bool(_ o: [String: Any], _ k: String, _ key: String, default d: Bool) throws -> Bool {
        guard let v = o[k], !(v is JSONNull) else { return d }
        guard let n = v as? Bool else { throw fail("\(key).\(k)", "must be true or false") }
        return n
    }
    package func int(_ v: Any?, _ key: String) throws -> Int {
        guard let n = v as? Int else { throw fail(key, "must be an integer") }
        return n
    }
    /// The largest token id a file may give (ids index tables of that length).
    package static let maxTokenId = (1 << 24) - 1

    /// A token id from the file: an integer in 0...maxTokenId, checked before it becomes an
    /// Int32 (an id like 4294967296 used to trap the conversion).
    package func tokenId(_ v: Any?, _ key: String) throws -> Int32 {
        let n = try int(v, key)
        guard n >= 0, n <= JSONReader.maxTokenId else { throw fail(key, "id \(n) is outside 0..<\(JSONReader.maxTokenId + 1)") }
        return Int32(n)
    }
    package func array(_ o: [String: Any], _ k: String, _ key: String) throws -> [Any] {
        guard let a = o[k] as? [Any] else { throw fail("\(key).\(k)", o[k] == nil ? "missing" : "must be a list") }
        return a
    }
    /// {"String": "..."} or {"Regex": "..."}.
    package func pattern(_ o: [String: Any], _ key: String) throws -> SplitPattern {
        let p = try object(o, "pattern", key)
        if let s = p["String"] as? String { return .literal(Array(s.utf8)) }
        if let s = p["Regex"] as? String {
            do { return try SplitPattern.regex(s) } catch let e as MoETuneError { throw fail("\(key).pattern", e.description) }
        }
        throw fail("\(key).pattern", "must be {\"String\": ...} or {\"Regex\": ...}")
    }

    package init(path: String) {
        self.path = path
    }
}
