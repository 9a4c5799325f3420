import MoEFormats
import MoEText
import MoECore
/// Several training files mixed with weights (data.train as a list): each epoch draws every
/// example of a file floor(weight) times, plus a seeded random round(frac(weight) * n) of
/// its n examples once more (a different part each epoch). Over epochs an example of a file
/// with weight w is drawn w times an epoch on average; the number drawn per epoch is fixed.
public struct WeightedMix: Sendable {
    /// The examples of each file: index ranges into the concatenated training examples.
    public var files: [(examples: [Int], weight: Double)]

    public init(files: [(examples: [Int], weight: Double)]) { self.files = files }

    /// The largest weight a file may have (data.train[i].weight).
    public static let maxWeight = 1_000_000.0
    /// The most examples an epoch of a weighted mix may draw: every draw is listed (and
    /// batched) when the epoch starts, so this bounds that memory (about 150 bytes a draw,
    /// some 600 MB here) and time whatever the weights.
    public static let maxDrawnPerEpoch = 1 << 22

    /// The first file (index) at which the draws of an epoch, counted file by file in floating
    /// point (no overflow), pass `maxDrawnPerEpoch`, with that count; nil when they never do.
    public func excessiveDraws() -> (file: Int, drawn: Double)? {
        var total = 0.0
        for (i, f) in files.enumerated() {
            total += (f.weight * Double(f.examples.count)).rounded(.up)
            if !(total <= Double(WeightedMix.maxDrawnPerEpoch)) { return (i, total) }
        }
        return nil
    }

    /// Whether the mix draws every example exactly once (one weight-1 file, or all weights 1).
    public var isIdentity: Bool { files.allSatisfy { $0.weight == 1 } }

    /// Examples drawn in an epoch.
    public var drawnPerEpoch: Int {
        files.reduce(0) { n, f in
            let whole = Int(f.weight.rounded(.down))
            return n + whole * f.examples.count + Int(((f.weight - Double(whole)) * Double(f.examples.count)).rounded())
        }
    }

    /// The indices drawn for `epoch` (an example drawn twice appears twice), file by file.
    /// Deterministic for a given seed and epoch.
    public func draw(seed: UInt64, epoch: Int) -> [Int] {
        var rng = SplitMix64(seed: seed ^ 0x4D49_58 &+ UInt64(epoch) &* 0x2545_F491)
        var out: [Int] = []
        out.reserveCapacity(drawnPerEpoch)
        for f in files {
            let whole = Int(f.weight.rounded(.down))
            for _ in 0..<whole { out += f.examples }
            let extra = Int(((f.weight - Double(whole)) * Double(f.examples.count)).rounded())
            if extra > 0 {
                var part = f.examples
                part.shuffle(using: &rng)
                out += part.prefix(extra).sorted()
            }
        }
        return out
    }
}
