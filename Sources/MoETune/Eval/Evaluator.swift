import Foundation

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
}

public enum Evaluator {
    /// Runs the model over every example, batched by similar length. `progress` gets
    /// (examples done, examples total) after each batch.
    public static func evaluate(model: Transformer, adapters: AdapterSet? = nil, dataset: Dataset, batchSize: Int,
                                progress: ((Int, Int) -> Void)? = nil) throws -> EvalResult {
        guard batchSize > 0 else { throw MoETuneError.invalid("--batch-size must be at least 1") }
        let start = Date()
        let batches = lengthGroupedBatches(dataset.examples, batchSize: batchSize)
        let longest = dataset.examples.map(\.tokens.count).max() ?? 1
        let state = ForwardState(config: model.config, batch: min(batchSize, dataset.examples.count),
                                 seq: longest, training: false, loraRank: adapters?.maxRank ?? 0)
        state.scoredOnly = true
        let c = model.config
        let routing = c.isMoE ? RoutingStatistics(layers: c.numLayers, experts: c.numExperts, k: c.expertsPerToken) : nil
        var lossSum = 0.0
        var count = 0
        var done = 0
        for indices in batches {
            let batch = TokenBatch(examples: indices.map { dataset.examples[$0] })
            let r = try model.forward(batch, state: state, adapters: adapters)
            lossSum += r.sum
            count += r.count
            if let routing, let st = state.routing { routing.add(st, auxLoss: state.auxLoss, zLoss: state.zLoss) }
            done += indices.count
            progress?(done, dataset.examples.count)
        }
        let loss = count > 0 ? lossSum / Double(count) : .nan
        return EvalResult(loss: loss, perplexity: Foundation.exp(loss), tokens: count,
                          examples: dataset.examples.count, truncated: dataset.truncated,
                          seconds: Date().timeIntervalSince(start), routing: routing)
    }
}
