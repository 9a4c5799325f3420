import Foundation

/// Reads a JSONL file: one JSON object per line. Blank lines are allowed (and are not
/// examples); every other line must be an object, or the error names file and line.
public enum JSONL {
    public static func readObjects(path: String) throws -> [(line: Int, object: [String: Any])] {
        try readObjectsWithText(path: path).map { ($0.line, $0.object) }
    }

    /// The objects with each line's text (for fields whose key order matters: chat messages).
    public static func readObjectsWithText(path: String) throws -> [(line: Int, object: [String: Any], text: String)] {
        guard FileManager.default.fileExists(atPath: path) else {
            throw MoETuneError.file(path: path, message: "data file not found")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoETuneError.file(path: path, message: "cannot read data file")
        }
        var result: [(Int, [String: Any], String)] = []
        var lineNo = 0
        var start = data.startIndex
        while start < data.endIndex {
            lineNo += 1
            let end = data[start...].firstIndex(of: UInt8(ascii: "\n")) ?? data.endIndex
            let line = data[start..<end]
            start = end < data.endIndex ? data.index(after: end) : end
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }) {
                continue
            }
            guard let text = String(data: line, encoding: .utf8) else {
                throw MoETuneError.line(path: path, line: lineNo, message: "not valid UTF-8")
            }
            let parsed: Any
            do {
                parsed = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed])
            } catch {
                throw MoETuneError.line(path: path, line: lineNo, message: "not valid JSON")
            }
            guard let object = parsed as? [String: Any] else {
                throw MoETuneError.line(path: path, line: lineNo, message: "expected a JSON object")
            }
            result.append((lineNo, object, text))
        }
        return result
    }
}
