import Foundation

/// Turns a growing list of token ids into text pieces safe to send: a piece never ends inside
/// a character still being spelled by the next tokens (an unfinished UTF-8 sequence decodes
/// to U+FFFD), nor inside what may become a stop string; a stop string ends the text before it.
package struct TextStream {
    private let decode: ([Int32]) -> String
    private let stops: [[Unicode.Scalar]]
    private var ids: [Int32] = []
    /// Unicode scalars of the text sent so far.
    private var sent = 0
    package private(set) var stopped = false
    /// The whole text sent.
    package private(set) var text = ""

    package init(stops: [String], decode: @escaping ([Int32]) -> String) {
        self.decode = decode
        self.stops = stops.map { Array($0.unicodeScalars) }
    }

    /// Adds a token; returns the text that may now be sent (maybe empty). After a stop string
    /// (`stopped`), nothing more is added.
    package mutating func add(_ token: Int32) -> String {
        guard !stopped else { return "" }
        ids.append(token)
        var all = Array(decode(ids).unicodeScalars)
        if let cut = firstStop(in: all) {
            stopped = true
            all.removeSubrange(cut...)
            return take(all, upTo: all.count)
        }
        var end = all.count
        while end > sent, all[end - 1] == "\u{FFFD}" { end -= 1 }
        end = min(end, all.count - heldForStop(all))
        return take(all, upTo: end)
    }

    /// At the end: whatever was held back (a partial stop string is text after all).
    package mutating func finish() -> String {
        guard !stopped else { return "" }
        let all = Array(decode(ids).unicodeScalars)
        return take(all, upTo: all.count)
    }

    private mutating func take(_ all: [Unicode.Scalar], upTo end: Int) -> String {
        guard end > sent else { return "" }
        var piece = String.UnicodeScalarView()
        piece.append(contentsOf: all[sent..<end])
        sent = end
        let s = String(piece)
        text += s
        return s
    }

    /// Where the earliest stop string starts in the text not yet sent (a stop may begin in
    /// held-back text only, since sent text never ends inside a possible stop).
    private func firstStop(in all: [Unicode.Scalar]) -> Int? {
        var best: Int?
        for s in stops where s.count <= all.count {
            var i = max(0, sent - s.count + 1)
            while i + s.count <= all.count {
                if all[i..<(i + s.count)].elementsEqual(s) { best = min(best ?? i, i); break }
                i += 1
            }
        }
        return best
    }

    /// The length of the longest end of the text that is the start of some stop string.
    private func heldForStop(_ all: [Unicode.Scalar]) -> Int {
        var held = 0
        for s in stops {
            var k = min(s.count - 1, all.count - sent)
            while k > held {
                if all[(all.count - k)...].elementsEqual(s[0..<k]) { held = k; break }
                k -= 1
            }
        }
        return held
    }
}
