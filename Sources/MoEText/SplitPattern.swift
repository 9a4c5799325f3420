import Foundation
import MoEFormats

/// The pattern of a Split pre-tokenizer (and of ByteLevel's GPT-2 regex), found in a range of
/// UTF-8 bytes. The pre-tokenizer regexes of GPT-2, Llama 3 and Qwen2 are recognised by their
/// exact text and scanned by hand over Unicode scalars, with the semantics of the Oniguruma
/// regexes Hugging Face tokenizers runs (leftmost alternative first, greedy with
/// backtracking); any other regex runs on BoundedRegex (the same semantics, with a step
/// limit: a pattern that backtracks without end is an error, not a hang), or, for a construct
/// BoundedRegex does not parse, on Swift Regex with Unicode-scalar semantics.
package enum SplitPattern: @unchecked Sendable {
    case gpt2
    /// Llama 3 (maxDigits 3) and Qwen2 (maxDigits 1).
    case llama3(maxDigits: Int)
    case literal([UInt8])
    case regex(Regex<AnyRegexOutput>)
    case bounded(BoundedRegex)
    /// Each scalar whose class has one of these bits is a match of its own.
    case scalarClass(UInt8)
    /// The Whitespace pre-tokenizer's `\w+|[^\w\s]+`, \w being Oniguruma's word class
    /// (Alphabetic, marks, decimal digits, connector punctuation, Join_Control).
    case wordsOrSymbols

    package static let gpt2Source = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    package static let llama3Source = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    package static let qwen2Source = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// A regex given in tokenizer.json; nil message: fine, else why it is refused.
    package static func regex(_ source: String) throws -> SplitPattern {
        switch source {
        case gpt2Source: return .gpt2
        case llama3Source: return .llama3(maxDigits: 3)
        case qwen2Source: return .llama3(maxDigits: 1)
        default:
            if let b = BoundedRegex(source) { return .bounded(b) }
            do {
                let r = try Regex(source).matchingSemantics(.unicodeScalar)
                return .regex(r)
            } catch {
                throw MoETuneError.invalid("regex \(source) cannot be compiled: \(error)")
            }
        }
    }

    /// Appends (range, isMatch) pieces covering `range` of `b`, in order.
    package func find(_ b: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into out: inout [(Range<Int>, Bool)]) throws {
        var last = range.lowerBound
        func emit(_ r: Range<Int>) {
            if last < r.lowerBound { out.append((last..<r.lowerBound, false)) }
            out.append((r, true))
            last = r.upperBound
        }
        switch self {
        case .gpt2, .llama3:
            var i = range.lowerBound
            while i < range.upperBound {
                let e = scan(b, i, range.upperBound)
                out.append((i..<e, true))
                i = e
            }
            last = range.upperBound
        case let .literal(pat):
            guard !pat.isEmpty else { break }
            var i = range.lowerBound
            while i + pat.count <= range.upperBound {
                var ok = true
                for k in 0..<pat.count where b[i + k] != pat[k] { ok = false; break }
                if ok { emit(i..<(i + pat.count)); i += pat.count } else { i += 1 }
            }
        case let .scalarClass(mask):
            var i = range.lowerBound
            while i < range.upperBound {
                let (v, n) = decodeScalar(b, i)
                if ScalarClass.of(v) & mask != 0 { emit(i..<(i + n)) }
                i += n
            }
        case .wordsOrSymbols:
            @inline(__always) func kind(_ v: UInt32) -> Int {
                let c = v < 0x80 ? asciiClass[Int(v)] : ScalarClass.of(v)
                if c & ScalarClass.space != 0 { return 0 }
                if c & (ScalarClass.letter | ScalarClass.mark | ScalarClass.decimal) != 0 || v == 0x5F { return 1 }
                if v == 0x200C || v == 0x200D { return 1 }                       // Join_Control
                if v >= 0x80, let p = Unicode.Scalar(v)?.properties, p.isAlphabetic || p.generalCategory == .connectorPunctuation { return 1 }
                return 2
            }
            var i = range.lowerBound
            while i < range.upperBound {
                let (v, n) = decodeScalar(b, i)
                let k = kind(v)
                if k == 0 { i += n; continue }
                var j = i + n
                while j < range.upperBound {
                    let (w, m) = decodeScalar(b, j)
                    if kind(w) != k { break }
                    j += m
                }
                emit(i..<j)
                i = j
            }
        case let .bounded(r):
            let found: [Range<Int>]
            do { found = try r.matches(b, range) } catch let e as BoundedRegex.StepLimit {
                throw MoETuneError.invalid("the regex \(Printable.quoted(r.source)) took more than \(e.steps) steps on a text of \(e.scalars) characters "
                    + "(catastrophic backtracking) and was stopped; the tokenizer cannot use this pattern")
            }
            for m in found { emit(m) }
        case let .regex(r):
            let s = String(decoding: UnsafeBufferPointer(rebasing: b[range]), as: UTF8.self)
            let u = s.utf8
            for m in s.matches(of: r) {
                let lo = range.lowerBound + u.distance(from: u.startIndex, to: m.range.lowerBound)
                let hi = range.lowerBound + u.distance(from: u.startIndex, to: m.range.upperBound)
                if lo == hi { continue }
                emit(lo..<hi)
            }
        }
        if last < range.upperBound { out.append((last..<range.upperBound, false)) }
    }

    /// End of a contraction ('s 't 'm 'd 're 've 'll; any case and ſ for 's when `caseless`,
    /// as llama 3's (?i:...)) at the apostrophe at byte i, or nil.
    @inline(__always)
    private static func contraction(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int, caseless: Bool) -> Int? {
        guard i + 1 < end else { return nil }
        let c1 = b[i + 1]
        let l1 = caseless ? (c1 | 0x20) : c1
        if l1 == 0x73 || l1 == 0x74 || l1 == 0x6D || l1 == 0x64 { return i + 2 }   // s t m d
        if caseless, c1 == 0xC5, i + 2 < end, b[i + 2] == 0xBF { return i + 3 }    // ſ folds to s
        if i + 2 < end {
            let l2 = caseless ? (b[i + 2] | 0x20) : b[i + 2]
            if (l1 == 0x72 && l2 == 0x65) || (l1 == 0x76 && l2 == 0x65) || (l1 == 0x6C && l2 == 0x6C) { return i + 3 }
        }
        return nil
    }

    /// End of the match of the hand-scanned patterns at byte i (< end). Every scalar is
    /// a letter, a number, whitespace or "other", so some alternative always matches.
    @inline(__always)
    private func scan(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int {
        let llama: Bool, maxDigits: Int
        switch self {
        case let .llama3(d): llama = true; maxDigits = d
        default: llama = false; maxDigits = Int.max
        }
        let L = ScalarClass.letter, N = ScalarClass.number, S = ScalarClass.space
        @inline(__always) func cls(_ j: Int) -> (UInt8, Int, UInt32) {
            let (v, n) = decodeScalar(b, j)
            return (v < 0x80 ? asciiClass[Int(v)] : ScalarClass.of(v), n, v)
        }
        @inline(__always) func run(_ j: Int, _ mask: UInt8, limit: Int = Int.max) -> Int {
            var j = j, count = 0
            while j < end, count < limit {
                let (c, n, _) = cls(j)
                if c & mask == 0 { break }
                j += n; count += 1
            }
            return j
        }
        @inline(__always) func runOther(_ j: Int) -> Int {
            var j = j
            while j < end {
                let (c, n, _) = cls(j)
                if c & (L | N | S) != 0 { break }
                j += n
            }
            return j
        }
        let c0 = b[i]
        if c0 == 0x27, let e = Self.contraction(b, i, end, caseless: llama) { return e }
        let (k0, n0, v0) = cls(i)
        let next = i + n0
        let k1: UInt8 = next < end ? cls(next).0 : 0
        if llama {
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if k0 & L != 0 { return run(next, L) }
            if v0 != 0x0D, v0 != 0x0A, k0 & N == 0, k1 & L != 0 { return run(next, L) }
            // \p{N}{1,maxDigits}
            if k0 & N != 0 { return run(i, N, limit: maxDigits) }
            //  ?[^\s\p{L}\p{N}]+[\r\n]*
            var j = -1
            if c0 == 0x20, next < end, k1 & (L | N | S) == 0 { j = runOther(next) }
            else if k0 & (L | N | S) == 0 { j = runOther(i) }
            if j >= 0 {
                while j < end, b[j] == 0x0D || b[j] == 0x0A { j += 1 }
                return j
            }
        } else {
            if c0 == 0x20, next < end {
                if k1 & L != 0 { return run(next, L) }
                if k1 & N != 0 { return run(next, N) }
                if k1 & (L | N | S) == 0 { return runOther(next) }
            }
            if k0 & L != 0 { return run(next, L) }
            if k0 & N != 0 { return run(next, N) }
            if k0 & S == 0 { return runOther(next) }
        }
        // Whitespace: i starts a run of \s.
        var e = i, lastStart = i, lastNewline = -1
        while e < end {
            let (c, n, v) = cls(e)
            if c & S == 0 { break }
            if v == 0x0D || v == 0x0A { lastNewline = e }
            lastStart = e
            e += n
        }
        if llama, lastNewline >= 0 { return lastNewline + 1 }           // \s*[\r\n]+
        if e == end { return e }                                        // \s+(?!\S)
        if lastStart > i { return lastStart }
        return e                                                        // \s+
    }
}

private let asciiClass: [UInt8] = (0..<128).map { ScalarClass.compute(UInt32($0)) }
