import MoEFormats
/// Text on its way through the tokenizer: UTF-8 bytes and, when offsets are wanted, for
/// each byte the range of the original text (UTF-8 bytes) it came from. Normalizers that
/// rewrite the text keep the ranges; pieces cut by the pre-tokenizer are byte ranges of it.
package struct TextBuffer {
    package var bytes: [UInt8]
    /// Per byte: original start and end; nil when offsets are not tracked.
    package var origin: [(Int32, Int32)]?

    package init(bytes: [UInt8], origin: [(Int32, Int32)]?) { self.bytes = bytes; self.origin = origin }

    /// A piece of the original text starting at byte `offset`.
    package init<C: Collection>(_ source: C, offset: Int, track: Bool) where C.Element == UInt8 {
        bytes = Array(source)
        origin = track ? (0..<bytes.count).map { (Int32(offset + $0), Int32(offset + $0 + 1)) } : nil
    }

    /// The original range of bytes r (empty r: an empty range where it sits).
    package func originalRange(_ r: Range<Int>) -> Range<Int> {
        guard let o = origin, !o.isEmpty else { return 0..<0 }
        if r.isEmpty {
            let p = r.lowerBound < o.count ? Int(o[r.lowerBound].0) : Int(o[o.count - 1].1)
            return p..<p
        }
        let lo = Int(o[r.lowerBound].0), hi = Int(o[r.upperBound - 1].1)
        return lo..<max(lo, hi)
    }

    /// Builds the buffer from pieces, each new text with the original range it stands for.
    package mutating func rewrite(_ body: (_ emit: (_ bytes: ArraySlice<UInt8>, _ from: Range<Int>) -> Void) -> Void) {
        var nb: [UInt8] = []
        nb.reserveCapacity(bytes.count + 8)
        var no: [(Int32, Int32)]? = origin == nil ? nil : []
        let old = self
        body { piece, from in
            nb.append(contentsOf: piece)
            guard no != nil else { return }
            let whole = old.originalRange(from)
            if from.count == piece.count {
                for k in 0..<piece.count {
                    let r = old.originalRange((from.lowerBound + k)..<(from.lowerBound + k + 1))
                    no!.append((Int32(r.lowerBound), Int32(r.upperBound)))
                }
            } else {
                for _ in 0..<piece.count { no!.append((Int32(whole.lowerBound), Int32(whole.upperBound))) }
            }
        }
        bytes = nb
        origin = no
    }
}
