import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// Mean next-token cross-entropy of a model over a data set.
public struct EvalResult: @unchecked Sendable {
    public var loss: Double
    public var perplexity: Double
    public var tokens: Int
    public var examples: Int
    public var truncated: Int
    public var seconds: Double
    /// Routing statistics summed over the data set (MoE models).
    public var routing: RoutingStatistics?

    package init(loss: Double, perplexity: Double, tokens: Int, examples: Int, truncated: Int, seconds: Double, routing: RoutingStatistics? = nil) {
        self.loss = loss
        self.perplexity = perplexity
        self.tokens = tokens
        self.examples = examples
        self.truncated = truncated
        self.seconds = seconds
        self.routing = routing
    }
}

public enum Evaluator {
    /// Runs the model over every example, batched by similar length, or with `packing` in
    /// packed rows (the rows of first-fit decreasing in file order, fullest first; the loss is
    /// the same mean over the same tokens). `progress` gets (examples done, examples total)
    /// after each batch.
    public static func evaluate(model: Transformer, adapters: AdapterSet? = nil, dataset: Dataset, batchSize: Int,
                                packing: PackingPlan? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> EvalResult {
        guard batchSize > 0 else { throw MoETuneError.invalid("--batch-size must be at least 1") }
        let start = Date()
        let lengths = dataset.examples.map(\.tokens.count)
        // Batches as rows of example indices (unpacked: one example a row).
        var batches: [[[Int]]]
        var rows = min(batchSize, dataset.examples.count), longest = lengths.max() ?? 1
        if let packing {
            let packed = packing.packRows(lengths, order: Array(lengths.indices))
            let fill = packed.map { $0.reduce(0) { $0 + lengths[$1] } }
            batches = stride(from: 0, to: packed.count, by: packing.rows).map { Array(packed[$0..<min($0 + packing.rows, packed.count)]) }
            rows = min(packing.rows, packed.count)
            longest = fill.max() ?? 1
        } else {
            batches = lengthGroupedBatches(dataset.examples, batchSize: batchSize).map { $0.map { [$0] } }
        }
        let state = ForwardState(config: model.config, batch: max(1, rows),
                                 seq: longest, training: false, loraRank: adapters?.maxRank ?? 0,
                                 headChunkRows: ForwardState.defaultHeadChunkRows(vocab: model.config.vocabSize))
        state.scoredOnly = true
        let c = model.config
        let routing = c.isMoE ? RoutingStatistics(layers: c.numLayers, experts: c.numExperts, k: c.expertsPerToken) : nil
        var lossSum = 0.0
        var count = 0
        var done = 0
        for rowsOfBatch in batches {
            let batch = packing != nil ? TokenBatch(packedRows: rowsOfBatch.map { $0.map { dataset.examples[$0] } })
                                       : TokenBatch(examples: rowsOfBatch.map { dataset.examples[$0[0]] })
            let r = try model.forward(batch, state: state, adapters: adapters)
            lossSum += r.sum
            count += r.count
            if let routing, let st = state.routing { routing.add(st, auxLoss: state.auxLoss, zLoss: state.zLoss) }
            done += rowsOfBatch.reduce(0) { $0 + $1.count }
            progress?(done, dataset.examples.count)
        }
        let loss = count > 0 ? lossSum / Double(count) : .nan
        return EvalResult(loss: loss, perplexity: Foundation.exp(loss), tokens: count,
                          examples: dataset.examples.count, truncated: dataset.truncated,
                          seconds: Date().timeIntervalSince(start), routing: routing)
    }
}
