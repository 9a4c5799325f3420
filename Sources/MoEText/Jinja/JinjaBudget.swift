import Foundation
import MoEFormats

/// What string operations may build while one template renders. Each operation that makes
/// text (`~`, `+`, `*`, replace, join, indent, format, str of a value, ...) says how much
/// before it builds it: one value may hold at most `JinjaEvaluator.maxOutputBytes`, and a
/// render may build at most `totalBytes` in all. A template growing a string with `~` in a
/// loop used to reach gigabytes; one doubling it, exhaust memory.
package final class JinjaBudget: @unchecked Sendable {
    package static let totalBytes = 256 << 20
    /// The budget of the render running on this thread (JinjaTemplate.render binds it).
    @TaskLocal package static var current: JinjaBudget?
    private var used = 0

    package init() {}

    /// Refuses `bytes` of text that `what` is about to build when one value may not hold it
    /// (asked before building: a replace or join can multiply its input).
    package static func check(_ bytes: Int, _ what: String) throws {
        guard bytes <= JinjaEvaluator.maxOutputBytes else {
            throw JinjaBuiltins.fail("\(what) would build \(mib(bytes)) of text, more than the \(mib(JinjaEvaluator.maxOutputBytes)) one value may hold")
        }
    }

    /// Counts `bytes` of text that `what` built against the render's budget (the evaluator
    /// charges every string a filter, call or operator returns).
    package static func charge(_ bytes: Int, _ what: String) throws {
        try check(bytes, what)
        guard let b = current else { return }
        b.used += bytes
        guard b.used <= totalBytes else {
            throw JinjaBuiltins.fail("the template builds more than \(mib(totalBytes)) of text in one render (\(what) in a loop?); it would exhaust memory and time")
        }
    }

    private static func mib(_ n: Int) -> String { n >= 1 << 20 ? "\(n >> 20) MiB" : "\(n) bytes" }
}

extension JinjaValue {
    /// At least the UTF-8 size of `str` (repr for containers: strings counted without their
    /// escapes), counted only up to `limit`: a list of a million references to one large
    /// string is refused before its text is built.
    package func textSize(upTo limit: Int) -> Int {
        var total = 0
        func add(_ v: JinjaValue, depth: Int) {
            guard total <= limit, depth <= 100 else { return }
            switch v {
            case let .string(s): total += s.utf8.count + (depth > 0 ? 2 : 0)
            case let .list(a), let .tuple(a):
                total += 2
                for x in a { add(x, depth: depth + 1); total += 2; if total > limit { return } }
            case let .dict(d):
                total += 2
                for (k, x) in d.pairs { add(k, depth: depth + 1); add(x, depth: depth + 1); total += 4; if total > limit { return } }
            case let .namespace(n): add(.dict(n.attributes), depth: depth + 1)
            default: total += 8
            }
        }
        add(self, depth: 0)
        return total
    }
}

extension JinjaBuiltins {
    /// `v.str`, after charging what it builds (`what` names the operation in the message).
    package static func text(_ v: JinjaValue, _ what: String) throws -> String {
        if case let .string(s) = v { return s }   // already built
        try JinjaBudget.check(v.textSize(upTo: JinjaEvaluator.maxOutputBytes + 1), what)
        let s = v.str
        try JinjaBudget.charge(s.utf8.count, what)
        return s
    }

    /// Start offsets (UTF-8 bytes) of the non-overlapping occurrences of `p` in `s`, left to
    /// right, at most `limit` of them (negative: all): Knuth-Morris-Pratt, linear in both.
    /// Valid UTF-8 is self-synchronizing, so byte matches are whole-scalar matches.
    package static func occurrences(of p: [UInt8], in s: [UInt8], limit: Int = -1) -> [Int] {
        guard !p.isEmpty, p.count <= s.count else { return [] }
        var fail = [Int](repeating: 0, count: p.count)
        var k = 0
        for i in 1..<p.count {
            while k > 0 && p[i] != p[k] { k = fail[k - 1] }
            if p[i] == p[k] { k += 1 }
            fail[i] = k
        }
        var hits: [Int] = []
        k = 0
        var i = 0
        while i < s.count {
            if limit >= 0 && hits.count >= limit { break }
            while k > 0 && s[i] != p[k] { k = fail[k - 1] }
            if s[i] == p[k] { k += 1 }
            if k == p.count {
                hits.append(i + 1 - p.count)
                k = 0   // non-overlapping: start afresh after the match
            }
            i += 1
        }
        return hits
    }

    /// Python's str.replace(old, new, count), linear, its output size charged before it is built.
    package static func replace(_ s: String, _ old: String, _ new: String, count: Int) throws -> String {
        if old.isEmpty {
            let n = s.unicodeScalars.count + 1
            let k = count < 0 ? n : min(count, n)
            try JinjaBudget.check(s.utf8.count + k * new.utf8.count, "replace")
            return pyReplace(s, old, new, count: count)
        }
        let b = Array(s.utf8), p = Array(old.utf8), r = Array(new.utf8)
        let hits = occurrences(of: p, in: b, limit: count)
        guard !hits.isEmpty else { return s }
        try JinjaBudget.check(b.count + hits.count * r.count - hits.count * p.count, "replace")
        var out: [UInt8] = []
        out.reserveCapacity(b.count + hits.count * r.count - hits.count * p.count)
        var last = 0
        for h in hits {
            out += b[last..<h]
            out += r
            last = h + p.count
        }
        out += b[last...]
        return String(decoding: out, as: UTF8.self)
    }

    /// Scalar offsets of the non-overlapping occurrences of `x` in `s` (str.find, count, ...).
    package static func scalarOccurrences(of x: String, in s: String) -> [Int] {
        let hits = occurrences(of: Array(x.utf8), in: Array(s.utf8))
        guard !hits.isEmpty else { return [] }
        // Byte offsets to scalar offsets in one pass.
        var out: [Int] = []
        out.reserveCapacity(hits.count)
        var scalar = 0, h = 0
        for (i, byte) in s.utf8.enumerated() {   // a hit's offset: the lead bytes before it
            while h < hits.count && hits[h] == i { out.append(scalar); h += 1 }
            if h == hits.count { break }
            if byte & 0xC0 != 0x80 { scalar += 1 }
        }
        return out
    }
}
