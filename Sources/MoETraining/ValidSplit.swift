import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
/// data.valid_split: a seeded random part of the training examples held out as the
/// validation set. The same seed and data give the same split; the two parts are disjoint
/// and each keeps the files' order.
public enum ValidSplitter {
    /// How many of `total` examples a split holds out: round(fraction * total), at least 1,
    /// or the count. Throws (naming data.valid_split) when nothing would be left to train on.
    public static func heldOut(_ split: TrainConfig.ValidSplit, total: Int, configPath: String) throws -> Int {
        let k: Int
        switch split {
        case .fraction(let f): k = max(1, Int((f * Double(total)).rounded()))
        case .count(let c): k = c
        }
        guard k < total else {
            throw MoETuneError.config(path: configPath, key: "data.valid_split",
                message: "holds out \(k) of the \(total) training examples, leaving none to train on")
        }
        return k
    }

    /// Indices 0..<total split into (train, valid) with `held` in valid: a seeded shuffle,
    /// its first `held` are the validation examples; both lists ascending.
    public static func split(total: Int, held: Int, seed: UInt64) -> (train: [Int], valid: [Int]) {
        var rng = SplitMix64(seed: seed ^ 0x5641_4C49_4453_504C)
        var order = Array(0..<total)
        order.shuffle(using: &rng)
        var isValid = [Bool](repeating: false, count: total)
        for i in order.prefix(held) { isValid[i] = true }
        return ((0..<total).filter { !isValid[$0] }, (0..<total).filter { isValid[$0] })
    }
}
