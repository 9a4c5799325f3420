import MoEFormats
/// tokenizer.json pre-tokenizers: cut normalized text into pieces that BPE encodes one by
/// one. Pieces are byte ranges of a TextBuffer; Metaspace and ByteLevel's prefix space
/// rewrite the buffer. ByteLevel's byte-to-character map is implicit: the model works on
/// raw bytes (see BPEModel).
package indirect enum PreTokenizer: Sendable {
    package enum Behavior: String, Sendable { case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious", mergedWithNext = "MergedWithNext", contiguous = "Contiguous" }
    package enum PrependScheme: String, Sendable { case first, always, never }

    case split(SplitPattern, Behavior, invert: Bool)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case metaspace(replacement: [UInt8], prepend: PrependScheme, split: Bool)
    case sequence([PreTokenizer])

    package static func parse(_ r: JSONReader, _ value: Any?, key: String) throws -> PreTokenizer? {
        guard let o = try r.optionalObject(value, key) else { return nil }
        let type = try r.string(o, "type", key)
        func behavior(_ d: Behavior) throws -> Behavior {
            guard let s = try r.optionalString(o, "behavior", key) else { return d }
            guard let b = Behavior(rawValue: s) else { throw r.fail("\(key).behavior", "\(Printable.quoted(s)) is not supported") }
            return b
        }
        switch type {
        case "Split":
            return .split(try r.pattern(o, key), try behavior(.isolated), invert: try r.bool(o, "invert", key, default: false))
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: try r.bool(o, "add_prefix_space", key, default: true),
                              useRegex: try r.bool(o, "use_regex", key, default: true))
        case "Digits":
            let individual = try r.bool(o, "individual_digits", key, default: false)
            return .split(.scalarClass(ScalarClass.number), individual ? .isolated : .contiguous, invert: false)
        case "Punctuation":
            return .split(.scalarClass(ScalarClass.punct | asciiPunctuationMark), try behavior(.isolated), invert: false)
        case "Whitespace":
            return .split(.wordsOrSymbols, .removed, invert: true)
        case "WhitespaceSplit":
            return .split(.scalarClass(ScalarClass.space), .removed, invert: false)
        case "Metaspace":
            let rep = try r.string(o, "replacement", key)
            guard rep.unicodeScalars.count == 1 else { throw r.fail("\(key).replacement", "must be one character") }
            var scheme: PrependScheme = .always
            if let s = try r.optionalString(o, "prepend_scheme", key) {
                guard let p = PrependScheme(rawValue: s) else { throw r.fail("\(key).prepend_scheme", "\(Printable.quoted(s)) is not supported") }
                scheme = p
            } else if o["add_prefix_space"] != nil {
                scheme = try r.bool(o, "add_prefix_space", key, default: true) ? .always : .never
            }
            return .metaspace(replacement: Array(rep.utf8), prepend: scheme, split: try r.bool(o, "split", key, default: true))
        case "Sequence":
            let list = try r.array(o, "pretokenizers", key)
            let parts = try list.enumerated().compactMap { try parse(r, $1, key: "\(key).pretokenizers[\($0)]") }
            // BPE works on raw bytes, so later steps would see the text, not ByteLevel's characters.
            if let k = parts.firstIndex(where: { $0.isByteLevel }), k != parts.count - 1 {
                throw r.fail("\(key).pretokenizers[\(k + 1)]", "a pre-tokenizer after ByteLevel is not supported")
            }
            return .sequence(parts)
        default:
            throw r.unsupported(key, type)
        }
    }

    package var isByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case let .sequence(l): return l.contains { $0.isByteLevel }
        default: return false
        }
    }

    /// Cuts `t` (one stretch of text between added tokens, starting at original byte
    /// `start`) into pieces.
    package func run(_ t: inout TextBuffer, pieces: inout [Range<Int>], start: Int) throws {
        switch self {
        case let .split(pattern, behavior, invert):
            var out: [Range<Int>] = []
            out.reserveCapacity(pieces.count * 4)
            var parts: [(Range<Int>, Bool)] = []
            try t.bytes.withUnsafeBufferPointer { b in
                for p in pieces {
                    parts.removeAll(keepingCapacity: true)
                    try pattern.find(b, p, into: &parts)
                    if invert { for k in parts.indices { parts[k].1.toggle() } }
                    PreTokenizer.apply(behavior, parts, into: &out)
                }
            }
            pieces = out
        case let .byteLevel(addPrefixSpace, useRegex):
            if addPrefixSpace {
                let old = t.bytes, oldPieces = pieces
                var np: [Range<Int>] = []
                var pos = 0
                t.rewrite { emit in
                    for p in oldPieces {
                        let begin = pos
                        if old[p.lowerBound] != 0x20 { emit([0x20][...], p.lowerBound..<p.lowerBound); pos += 1 }
                        emit(old[p], p); pos += p.count
                        np.append(begin..<pos)
                    }
                }
                pieces = np
            }
            if useRegex { try PreTokenizer.split(.gpt2, .isolated, invert: false).run(&t, pieces: &pieces, start: start) }
        case let .metaspace(rep, scheme, split):
            let old = t.bytes, oldPieces = pieces
            var np: [Range<Int>] = []
            var pos = 0
            t.rewrite { emit in
                for p in oldPieces {
                    let begin = pos
                    let startsWithRep = p.count >= rep.count && Array(old[p.lowerBound..<(p.lowerBound + rep.count)]) == rep
                    let atStart = p.lowerBound == 0 && start == 0
                    if !startsWithRep && old[p.lowerBound] != 0x20 && (scheme == .always || (scheme == .first && atStart)) {
                        emit(rep[...], p.lowerBound..<p.lowerBound); pos += rep.count
                    }
                    var runStart = p.lowerBound
                    for i in p where old[i] == 0x20 {
                        if runStart < i { emit(old[runStart..<i], runStart..<i); pos += i - runStart }
                        emit(rep[...], i..<(i + 1)); pos += rep.count
                        runStart = i + 1
                    }
                    if runStart < p.upperBound { emit(old[runStart..<p.upperBound], runStart..<p.upperBound); pos += p.upperBound - runStart }
                    np.append(begin..<pos)
                }
            }
            pieces = np
            if split { try PreTokenizer.split(.literal(rep), .mergedWithNext, invert: false).run(&t, pieces: &pieces, start: start) }
        case let .sequence(list):
            for p in list { try p.run(&t, pieces: &pieces, start: start) }
        }
    }

    /// Hugging Face's SplitDelimiterBehavior over (range, isMatch) parts; empty pieces dropped.
    package static func apply(_ behavior: Behavior, _ parts: [(Range<Int>, Bool)], into out: inout [Range<Int>]) {
        let first = out.count
        switch behavior {
        case .isolated:
            for (r, _) in parts where !r.isEmpty { out.append(r) }
            return
        case .removed:
            for (r, m) in parts where !m && !r.isEmpty { out.append(r) }
            return
        case .mergedWithPrevious:
            var prevMatch = false
            for (r, m) in parts {
                if m && !prevMatch && out.count > first { out[out.count - 1] = out[out.count - 1].lowerBound..<r.upperBound } else { out.append(r) }
                prevMatch = m
            }
        case .mergedWithNext:
            var rev: [Range<Int>] = []
            var prevMatch = false
            for (r, m) in parts.reversed() {
                if m && !prevMatch && !rev.isEmpty { rev[rev.count - 1] = r.lowerBound..<rev[rev.count - 1].upperBound } else { rev.append(r) }
                prevMatch = m
            }
            out.append(contentsOf: rev.reversed())
        case .contiguous:
            var prevMatch = false
            for (r, m) in parts {
                if m == prevMatch && out.count > first { out[out.count - 1] = out[out.count - 1].lowerBound..<r.upperBound } else { out.append(r) }
                prevMatch = m
            }
        }
        var k = first
        while k < out.count { if out[k].isEmpty { out.remove(at: k) } else { k += 1 } }
    }
}

/// Rust's is_ascii_punctuation covers ASCII symbols too ($+<=>^`|~); Punctuation splits them.
private let asciiPunctuationMark: UInt8 = ScalarClass.asciiPunct
