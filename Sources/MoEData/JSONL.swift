import Foundation
import MoEFormats
import MoEText
import MoECore

/// Reads a JSONL file: one JSON object per line. Blank lines are allowed (and are not
/// examples); every other line must be an object, or the error names file and line.
/// A line longer than `maxLineBytes` is refused before it is parsed, so one hostile line
/// cannot cost minutes and gigabytes.
public enum JSONL {
    /// The longest line accepted, in bytes (data.max_line_bytes in the training config).
    public static let defaultMaxLineBytes = 1 << 20
    public static var maxLineBytes = defaultMaxLineBytes

    public static func readObjects(path: String, maxLineBytes: Int = JSONL.maxLineBytes) throws -> [(line: Int, object: [String: Any])] {
        try readObjectsWithText(path: path, maxLineBytes: maxLineBytes).map { ($0.line, $0.object) }
    }

    /// The objects with each line's text (for fields whose key order matters: chat messages).
    public static func readObjectsWithText(path: String, maxLineBytes: Int = JSONL.maxLineBytes) throws -> [(line: Int, object: [String: Any], text: String)] {
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
            guard line.count <= maxLineBytes else {
                throw MoETuneError.line(path: path, line: lineNo, message: "line of \(line.count) bytes is longer than the limit of \(maxLineBytes) (data.max_line_bytes)")
            }
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
