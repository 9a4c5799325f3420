import Foundation
import MoEFormats
import MoEText
import MoEData

/// The verifiable rewards that need no code (grpo.rewards types other than command), each a
/// pure function of the completion's text (and token count) and the data line's fields.
package enum BuiltinReward {
    /// The text a reward compares: after the last `marker` (when given and present), else the
    /// content of the last \boxed{...} (boxed, when present), else the whole completion; trimmed.
    package static func extract(_ text: String, marker: String?, boxed: Bool) -> String {
        var s = Substring(text)
        if let marker, let r = text.range(of: marker, options: .backwards) { s = text[r.upperBound...] }
        if boxed, let b = lastBoxed(String(s)) { return b.trimmingCharacters(in: .whitespacesAndNewlines) }
        return s.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The content of the last \boxed{...}, braces balanced; nil when there is none (or it is unclosed).
    package static func lastBoxed(_ text: String) -> String? {
        guard let r = text.range(of: "\\boxed{", options: .backwards) else { return nil }
        var depth = 1, i = r.upperBound
        while i < text.endIndex {
            switch text[i] {
            case "{": depth += 1
            case "}":
                depth -= 1
                if depth == 0 { return String(text[r.upperBound..<i]) }
            default: break
            }
            i = text.index(after: i)
        }
        return nil
    }

    /// exact: 1 when the extracted text equals the answer (both trimmed), else 0.
    package static func exact(_ text: String, answer: String, marker: String?, boxed: Bool) -> Double {
        extract(text, marker: marker, boxed: boxed) == answer.trimmingCharacters(in: .whitespacesAndNewlines) ? 1 : 0
    }

    /// The last number in `text`: an optional minus, digits with optional thousands commas, an
    /// optional fraction and exponent ("-1,234.5e3"); nil when there is none.
    package static func lastNumber(_ text: String) -> Double? {
        let s = Array(text.unicodeScalars)
        func digit(_ i: Int) -> Bool { i < s.count && s[i].properties.numericType == .decimal && s[i].isASCII }
        var last: Double?, i = 0
        while i < s.count {
            guard digit(i) || (s[i] == "." && digit(i + 1)) else { i += 1; continue }
            var j = i, text = (i > 0 && s[i - 1] == "-") ? "-" : ""
            while j < s.count, digit(j) || ((s[j] == "," || s[j] == ".") && digit(j + 1)) {
                if s[j] != "," { text.unicodeScalars.append(s[j]) }
                j += 1
            }
            if j + 1 < s.count, s[j] == "e" || s[j] == "E" {
                var k = j + 1
                if s[k] == "-" || s[k] == "+" { k += 1 }
                if digit(k) {
                    text += "e" + (s[j + 1] == "-" ? "-" : "")
                    while digit(k) { text.unicodeScalars.append(s[k]); k += 1 }
                    j = k
                }
            }
            if let v = Double(text), v.isFinite { last = v }
            i = j
        }
        return last
    }

    /// numeric: 1 when the last number of the extracted text is within `tolerance` of the answer's.
    package static func numeric(_ text: String, answer: Double, marker: String?, tolerance: Double) -> Double {
        guard let v = lastNumber(extract(text, marker: marker, boxed: false)) else { return 0 }
        return abs(v - answer) <= tolerance ? 1 : 0
    }

    /// regex: 1 when the pattern matches (non-empty) somewhere in the completion; a match that
    /// runs past the engine's step limit counts as none.
    package static func regex(_ text: String, _ re: BoundedRegex) -> Double {
        var bytes = Array(text.utf8)
        let found = bytes.withUnsafeMutableBufferPointer { b in
            (try? re.matches(UnsafeBufferPointer(b), 0..<b.count).isEmpty == false) ?? false
        }
        return found ? 1 : 0
    }

    /// json: 1 when the trimmed completion (or the content of a ```json fence in it) parses as
    /// JSON and, with `keys`, is an object holding each of them.
    package static func json(_ text: String, keys: [String]) -> Double {
        var s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if s.hasPrefix("```") {
            s = String(s.drop { $0 != "\n" }.dropFirst())
            if s.hasSuffix("```") { s = String(s.dropLast(3)) }
        }
        guard let v = try? JSONSerialization.jsonObject(with: Data(s.utf8), options: [.fragmentsAllowed]) else { return 0 }
        guard !keys.isEmpty else { return 1 }
        guard let o = v as? [String: Any] else { return 0 }
        return keys.allSatisfy { o[$0] != nil } ? 1 : 0
    }

    /// length: -penalty x the completion tokens beyond max_tokens (0 within).
    package static func length(tokens: Int, maxTokens: Int, penalty: Double) -> Double {
        -penalty * Double(max(0, tokens - maxTokens))
    }

    /// format: 1 when the trimmed completion follows the template, each "..." any text (possibly
    /// empty) and the rest literal, from the first character to the last; else 0.
    package static func format(_ text: String, template: String) -> Double {
        let s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = template.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "...")
        guard parts.count > 1 else { return s == parts[0] ? 1 : 0 }
        guard s.hasPrefix(parts[0]) else { return 0 }
        var rest = s.dropFirst(parts[0].count)
        // Middle literals at their earliest place (optimal for a glob), the last one at the end.
        for p in parts.dropFirst().dropLast() where !p.isEmpty {
            guard let r = rest.range(of: p) else { return 0 }
            rest = rest[r.upperBound...]
        }
        return rest.hasSuffix(parts.last!) ? 1 : 0
    }
}
