import MoEFormats
import MoEText
import MoECore
/// Groups examples into batches of similar length (sorted by length, then cut into
/// groups of `batchSize`), so padding stays small. Returns index lists into `examples`.
public func lengthGroupedBatches(_ examples: [Example], batchSize: Int) -> [[Int]] {
    let order = examples.indices.sorted { (examples[$0].tokens.count, $0) > (examples[$1].tokens.count, $1) }
    return stride(from: 0, to: order.count, by: batchSize).map { Array(order[$0..<min($0 + batchSize, order.count)]) }
}

extension TokenBatch {
    /// A right-padded batch of the given examples.
    public init(examples: [Example], pad: Int32 = 0) {
        self.init(sequences: examples.map(\.tokens), counted: examples.map(\.counted), pad: pad)
    }

    /// A packed batch: row r holds the examples rows[r] back to back, right-padded to the
    /// longest row. Each example keeps its own targets (its last token predicts nothing, so
    /// no prediction crosses into the next example) and positions 0..<length; the padding
    /// after a row's examples gets positions 0, 1, ... of its own, so it forms a separate
    /// block that no real token attends to.
    public init(packedRows rows: [[Example]], pad: Int32 = 0) {
        let b = rows.count
        let lengths = rows.map { $0.reduce(0) { $0 + $1.tokens.count } }
        let t = max(1, lengths.max() ?? 1)
        var ids = [Int32](repeating: pad, count: b * t)
        var targets = [Int32](repeating: -1, count: b * t)
        var positions = [Int32](repeating: 0, count: b * t)
        for (r, row) in rows.enumerated() {
            var at = r * t
            for ex in row {
                let n = ex.tokens.count
                for j in 0..<n {
                    ids[at + j] = ex.tokens[j]
                    positions[at + j] = Int32(j)
                    if j > 0, ex.counted[j] { targets[at + j - 1] = ex.tokens[j] }
                }
                at += n
            }
            for j in 0..<(t - lengths[r]) { positions[at + j] = Int32(j) }
        }
        self.init(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths, positions: positions)
    }
}

/// The order of training batches for one epoch: a seeded shuffle, then within windows
/// of 32 batches' worth of examples a sort by length, cut into batches, and the batches
/// shuffled again (as mlx-lm and others do), so batches hold similar lengths without a
/// fixed length order. Deterministic for a given seed and epoch.
public func trainingBatches(_ examples: [Example], batchSize: Int, seed: UInt64, epoch: Int) -> [[Int]] {
    trainingBatches(lengths: examples.map(\.tokens.count), batchSize: batchSize, seed: seed, epoch: epoch)
}

/// The same over items of the given lengths (preference pairs: the longer sequence of each).
public func trainingBatches(lengths: [Int], batchSize: Int, seed: UInt64, epoch: Int) -> [[Int]] {
    var rng = SplitMix64(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9)
    var order = Array(lengths.indices)
    order.shuffle(using: &rng)
    let window = batchSize * 32
    var batches: [[Int]] = []
    for start in stride(from: 0, to: order.count, by: window) {
        let chunk = order[start..<min(start + window, order.count)].sorted {
            (lengths[$0], $0) < (lengths[$1], $1)
        }
        for b in stride(from: 0, to: chunk.count, by: batchSize) {
            batches.append(Array(chunk[(chunk.startIndex + b)..<min(chunk.startIndex + b + batchSize, chunk.endIndex)]))
        }
    }
    batches.shuffle(using: &rng)
    return batches
}
