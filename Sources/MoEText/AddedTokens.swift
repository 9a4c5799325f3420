import MoEFormats
/// The added tokens of tokenizer.json (special or not) and how Hugging Face cuts them out
/// of the text: leftmost-longest matches, non-overlapping, with single_word, lstrip and
/// rstrip applied to each match.
package struct AddedTokens: Sendable {
    package struct Token: Sendable {
        package var id: Int32
        package var content: String
        package var bytes: [UInt8]
        package var special, lstrip, rstrip, singleWord, normalized: Bool
    }
    package var tokens: [Token] = []

    /// A matcher over the tokens with normalized == `normalized`, their content passed
    /// through `normalize` when given.
    package func matcher(normalized: Bool, _ normalize: ((String) throws -> [UInt8])?) throws -> Matcher {
        var m = Matcher()
        for t in tokens where t.normalized == normalized {
            var t = t
            if let normalize { t.bytes = try normalize(t.content) }
            guard !t.bytes.isEmpty else { continue }
            m.byFirst[Int(t.bytes[0]), default: []].append(m.list.count)
            m.list.append(t)
        }
        for k in m.byFirst.keys { m.byFirst[k]!.sort { m.list[$0].bytes.count > m.list[$1].bytes.count } }
        return m
    }

    package struct Matcher: Sendable {
        package var list: [Token] = []
        package var byFirst: [Int: [Int]] = [:]
        package var isEmpty: Bool { list.isEmpty }

        /// (range, id) parts covering r: id nil for text between tokens.
        package func split(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, into out: inout [(Range<Int>, Int32?)]) {
            var startOffset = r.lowerBound
            var i = r.lowerBound
            while i < r.upperBound {
                guard let cands = byFirst[Int(b[i])] else { i += 1; continue }
                var found: Token?
                for c in cands {
                    let t = list[c]
                    if i + t.bytes.count <= r.upperBound, t.bytes.withUnsafeBufferPointer({ tb in
                        var k = 0
                        while k < tb.count, tb[k] == b[i + k] { k += 1 }
                        return k == tb.count
                    }) { found = t; break }
                }
                guard let t = found else { i += 1; continue }
                var start = i, stop = i + t.bytes.count
                i = stop
                if t.singleWord {
                    let startSpace = start == r.lowerBound || !isWordScalar(before: start, b, r)
                    let stopSpace = stop == r.upperBound || !isWordScalar(at: stop, b, r)
                    if !startSpace || !stopSpace { continue }
                }
                if t.lstrip {
                    var s = start
                    while s > r.lowerBound {
                        var p = s - 1
                        while p > r.lowerBound, b[p] & 0xC0 == 0x80 { p -= 1 }
                        guard ScalarClass.of(decodeScalar(b, p).0) & ScalarClass.space != 0 else { break }
                        s = p
                    }
                    start = max(s, startOffset)
                }
                if t.rstrip {
                    while stop < r.upperBound {
                        let (v, n) = decodeScalar(b, stop)
                        guard ScalarClass.of(v) & ScalarClass.space != 0 else { break }
                        stop += n
                    }
                }
                if startOffset < start { out.append((startOffset..<start, nil)) }
                out.append((start..<stop, t.id))
                startOffset = stop
            }
            if startOffset < r.upperBound { out.append((startOffset..<r.upperBound, nil)) }
        }

        private func isWordScalar(before p: Int, _ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
            var s = p - 1
            while s > r.lowerBound, b[s] & 0xC0 == 0x80 { s -= 1 }
            return ScalarClass.of(decodeScalar(b, s).0) & (ScalarClass.letter | ScalarClass.number) != 0
        }
        private func isWordScalar(at p: Int, _ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
            ScalarClass.of(decodeScalar(b, p).0) & (ScalarClass.letter | ScalarClass.number) != 0
        }
    }
}
