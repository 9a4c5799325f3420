import Foundation
import MoEFormats

/// tokenizer.json normalizers: rewrite the text (outside added tokens) before it is cut
/// into pieces. Origins follow each rewrite (see TextBuffer).
package indirect enum Normalizer: Sendable {
    case nfc, nfd, nfkc, nfkd, lowercase
    case prepend([UInt8])
    case replace(SplitPattern, [UInt8])
    case strip(left: Bool, right: Bool)
    case sequence([Normalizer])

    package static func parse(_ r: JSONReader, _ value: Any?, key: String) throws -> Normalizer? {
        guard let o = try r.optionalObject(value, key) else { return nil }
        let type = try r.string(o, "type", key)
        switch type {
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        case "Prepend": return .prepend(Array(try r.string(o, "prepend", key).utf8))
        case "Replace":
            return .replace(try r.pattern(o, key), Array(try r.string(o, "content", key).utf8))
        case "Strip":
            return .strip(left: try r.bool(o, "strip_left", key, default: true), right: try r.bool(o, "strip_right", key, default: true))
        case "Sequence":
            let list = try r.array(o, "normalizers", key)
            return .sequence(try list.enumerated().compactMap { try parse(r, $1, key: "\(key).normalizers[\($0)]") })
        default:
            throw r.unsupported(key, type)
        }
    }

    package func apply(_ t: inout TextBuffer) throws {
        switch self {
        case .nfc, .nfd, .nfkc, .nfkd:
            if !t.bytes.contains(where: { $0 >= 0x80 }) { return }
            if case .nfc = self, Normalizer.nfcStable(t.bytes) { return }
            let s = String(decoding: t.bytes, as: UTF8.self)
            let n: String
            switch self {
            case .nfc: n = s.precomposedStringWithCanonicalMapping
            case .nfd: n = s.decomposedStringWithCanonicalMapping
            case .nfkc: n = s.precomposedStringWithCompatibilityMapping
            default: n = s.decomposedStringWithCompatibilityMapping
            }
            let nb = Array(n.utf8)
            if nb == t.bytes { return }
            let all = 0..<t.bytes.count
            t.rewrite { emit in emit(nb[...], all) }
        case .lowercase:
            let old = t.bytes
            t.rewrite { emit in
                old.withUnsafeBufferPointer { b in
                    var i = 0
                    while i < b.count {
                        let (v, n) = decodeScalar(b, i)
                        if v < 0x80 {
                            let c = (v >= 0x41 && v <= 0x5A) ? UInt8(v + 32) : UInt8(v)
                            emit([c][...], i..<(i + 1))
                        } else if let s = Unicode.Scalar(v) {
                            emit(Array(s.properties.lowercaseMapping.utf8)[...], i..<(i + n))
                        }
                        i += n
                    }
                }
            }
        case let .prepend(p):
            guard !t.bytes.isEmpty, !p.isEmpty else { return }
            let all = 0..<t.bytes.count, old = t.bytes
            t.rewrite { emit in emit(p[...], 0..<0); emit(old[all], all) }
        case let .replace(pattern, content):
            var parts: [(Range<Int>, Bool)] = []
            try t.bytes.withUnsafeBufferPointer { try pattern.find($0, 0..<$0.count, into: &parts) }
            if !parts.contains(where: { $0.1 }) { return }
            let old = t.bytes
            t.rewrite { emit in
                for (r, isMatch) in parts { emit(isMatch ? content[...] : old[r], r) }
            }
        case let .strip(left, right):
            var lo = 0, hi = t.bytes.count
            t.bytes.withUnsafeBufferPointer { b in
                if left {
                    while lo < hi {
                        let (v, n) = decodeScalar(b, lo)
                        guard ScalarClass.of(v) & ScalarClass.space != 0 else { break }
                        lo += n
                    }
                }
                if right {
                    while hi > lo {
                        var s = hi - 1
                        while s > lo, b[s] & 0xC0 == 0x80 { s -= 1 }
                        let (v, _) = decodeScalar(b, s)
                        guard ScalarClass.of(v) & ScalarClass.space != 0 else { break }
                        hi = s
                    }
                }
            }
            if lo == 0, hi == t.bytes.count { return }
            let old = t.bytes
            t.rewrite { emit in emit(old[lo..<hi], lo..<hi) }
        case let .sequence(list):
            for n in list { try n.apply(&t) }
        }
    }

    /// True when every scalar lies in a range whose characters NFC leaves alone whatever
    /// surrounds them (no combining marks, jamo, singletons or composition exclusions), so
    /// the text is its own NFC without asking Foundation.
    package static func nfcStable(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { b in
            var i = 0
            while i < b.count {
                let (v, n) = decodeScalar(b, i)
                i += n
                switch v {
                case 0..<0x300, 0x388...0x3FF, 0x400...0x482, 0x48A...0x52F, 0x2002...0x2027, 0x2030...0x205E,
                     0x2190...0x22FF, 0x2500...0x27BF, 0x3000...0x3029, 0x3030...0x303F, 0x3041...0x3096,
                     0x30A1...0x30FA, 0x30FC...0x30FF, 0x4E00...0x9FFF, 0xAC00...0xD7A3, 0xFE00...0xFE0F,
                     0xFEFF, 0xFF01...0xFF60, 0x1F300...0x1FAFF:
                    continue
                default:
                    return false
                }
            }
            return true
        }
    }

    /// The normalizer of an added token's content (for tokens with normalized: true).
    package func normalize(_ s: String) throws -> [UInt8] {
        var t = TextBuffer(Array(s.utf8), offset: 0, track: false)
        try apply(&t)
        return t.bytes
    }
}
