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
    private var prepared: [TokenBatch] = []

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

    /// The m-th micro-batch of the run. An epoch's batches are laid out at once, before its
    /// steps, so a step only computes: the hot path allocates nothing.
    package func microBatch(_ m: Int) -> TokenBatch {
        var epoch = 0, index = m
        while index >= count(epoch: epoch) { index -= count(epoch: epoch); epoch += 1 }
        if epoch != preparedEpoch {
            prepared = batches(epoch: epoch).map { rows in
                packing != nil ? TokenBatch(packedRows: rows.map { $0.map { examples[$0] } })
                               : TokenBatch(examples: rows.map { examples[$0[0]] })
            }
            preparedEpoch = epoch
        }
        return prepared[index]
    }

    /// The largest micro-batch any epoch can hold: (rows, tokens a row), for the buffers.
    package var capacity: (rows: Int, seq: Int) {
        let longest = examples.map(\.tokens.count).max() ?? 1
        let drawn = max(1, mix.drawnPerEpoch)
        guard let packing else { return (min(batchSize, drawn), longest) }
        let total = mix.files.reduce(0) { n, f in
            n + Int(f.weight.rounded(.up)) * f.examples.reduce(0) { $0 + examples[$1].tokens.count }
        }
        return (min(packing.rows, drawn), max(longest, min(packing.rowTokens, total)))
    }
}
