import Foundation

/// JSONSerialization keeps one of two equal keys of an object silently; a header that names a
/// tensor twice must be refused instead. This scans a JSON text's top-level object for a key
/// that occurs twice (compared as written, escapes included) without building anything else.
package enum JSONDuplicateKeys {
    /// The first top-level key that occurs twice, or nil.
    package static func firstDuplicate(in json: Data) -> String? {
        var seen = Set<Data>()
        var depth = 0
        var i = json.startIndex
        while i < json.endIndex {
            let c = json[i]
            if c == UInt8(ascii: "\"") {
                // A string: find its end, skipping escaped characters.
                var j = json.index(after: i)
                while j < json.endIndex, json[j] != UInt8(ascii: "\"") {
                    j = json.index(j, offsetBy: json[j] == UInt8(ascii: "\\") ? 2 : 1, limitedBy: json.endIndex) ?? json.endIndex
                }
                guard j < json.endIndex else { return nil }
                if depth == 1 {
                    // A key when the next non-blank character is a colon.
                    var k = json.index(after: j)
                    while k < json.endIndex, [0x20, 0x09, 0x0A, 0x0D].contains(json[k]) { k = json.index(after: k) }
                    if k < json.endIndex, json[k] == UInt8(ascii: ":") {
                        let key = Data(json[json.index(after: i)..<j])
                        if !seen.insert(key).inserted { return String(decoding: key, as: UTF8.self) }
                    }
                }
                i = json.index(after: j)
                continue
            }
            if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") { depth += 1 }
            if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") { depth -= 1 }
            i = json.index(after: i)
        }
        return nil
    }
}
