import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
/// The training micro-batches, epoch after epoch: which examples an epoch draws (the
/// weighted mix of the training files), how they are batched (similar lengths, or packed
/// rows), and which micro-batch the m-th of the whole run is. A function of the seed and
/// the data alone, so a resumed run continues with exactly the batches it would have had.
package final class BatchPlan {
    package let examples: [Example]
    package let mix: WeightedMix
    package let batchSize: Int
    package let packing: PackingPlan?
    package let seed: UInt64
    /// Micro-batches of epochs 0, 1, ... as far as computed (packed epochs of a weighted mix
    /// can differ in count).
    private var counts: [Int] = []
    private var preparedEpoch = -1
    /// The prepared epoch's micro-batches as example indices, and the window of them laid out
    /// as TokenBatches (a whole epoch laid out at once held every drawn token twice).
    private var epochRows: [[[Int]]] = []
    private var windowStart = 0
    private var prepared: [TokenBatch] = []
    package static let window = 64

    package init(examples: [Example], mix: WeightedMix, batchSize: Int, packing: PackingPlan?, seed: UInt64) {
        self.examples = examples
        self.mix = mix
        self.batchSize = batchSize
        self.packing = packing
        self.seed = seed
    }

    /// The micro-batches of `epoch` as lists of rows of example indices (unpacked: one
    /// example a row).
    package func batches(epoch: Int) -> [[[Int]]] {
        if let last = lastPlanned, last.epoch == epoch { return last.rows }
        let rows = plan(epoch: epoch)
        lastPlanned = (epoch, rows)
        return rows
    }

    /// The epoch planned last (count and microBatch ask for the same epoch in turn).
    private var lastPlanned: (epoch: Int, rows: [[[Int]]])?

    private func plan(epoch: Int) -> [[[Int]]] {
        let drawn = mix.isIdentity ? Array(examples.indices) : mix.draw(seed: seed, epoch: epoch)
        if let packing {
            return packing.batches(drawn.map { examples[$0].tokens.count }, seed: seed, epoch: epoch)
                .map { $0.map { $0.map { drawn[$0] } } }
        }
        return trainingBatches(drawn.map { examples[$0] }, batchSize: batchSize, seed: seed, epoch: epoch)
            .map { $0.map { [drawn[$0]] } }
    }

    package func count(epoch: Int) -> Int {
        while counts.count <= epoch { counts.append(batches(epoch: counts.count).count) }
        return counts[epoch]
    }

    /// Micro-batches of the first epoch (the step plan counts epochs in these).
    package var perEpoch: Int { count(epoch: 0) }

    /// The m-th micro-batch of the run. An epoch's batches are planned at once and laid out
    /// `window` at a time, before their steps, so a step only computes; the memory is the
    /// epoch's index lists and one window of batches, not every drawn token.
    package func microBatch(_ m: Int) -> TokenBatch {
        var epoch = 0, index = m
        while index >= count(epoch: epoch) { index -= count(epoch: epoch); epoch += 1 }
        if epoch != preparedEpoch {
            epochRows = batches(epoch: epoch)
            preparedEpoch = epoch
            prepared = []
            windowStart = 0
        }
        if index < windowStart || index >= windowStart + prepared.count {
            windowStart = index / BatchPlan.window * BatchPlan.window
            prepared = epochRows[windowStart..<min(windowStart + BatchPlan.window, epochRows.count)].map { rows in
                packing != nil ? TokenBatch(packedRows: rows.map { $0.map { examples[$0] } })
                               : TokenBatch(examples: rows.map { examples[$0[0]] })
            }
        }
        return prepared[index - windowStart]
    }

    /// The largest micro-batch any epoch can hold: (rows, tokens a row), for the buffers.
    package var capacity: (rows: Int, seq: Int) {
        let longest = examples.map(\.tokens.count).max() ?? 1
        let drawn = max(1, mix.drawnPerEpoch)
        guard let packing else { return (min(batchSize, drawn), longest) }
        let total = mix.files.reduce(0) { n, f in   // saturating: only compared with rowTokens
            let t = f.weight.rounded(.up) * Double(f.examples.reduce(0) { $0 + examples[$1].tokens.count })
            return n.addingReportingOverflow(t < 1e15 ? Int(t) : 1 << 50).partialValue
        }
        return (min(packing.rows, drawn), max(longest, min(packing.rowTokens, total)))
    }
}
