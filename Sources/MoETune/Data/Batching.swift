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
}
