import MoEFormats
import MoEText
import MoECore
/// Sequence packing: examples concatenated into rows of up to `rowTokens` tokens (first-fit
/// decreasing bin packing), `rows` rows a micro-batch. The batch built from a plan is a
/// TokenBatch(packedRows:), whose attention stays inside each example.
public struct PackingPlan: Sendable, Equatable {
    /// Capacity of one packed row (training.max_seq_len; every example fits in one row).
    public var rowTokens: Int
    /// Rows per micro-batch (training.batch_tokens / max_seq_len, at least 1).
    public var rows: Int

    public init(rowTokens: Int, rows: Int) {
        precondition(rowTokens >= 1 && rows >= 1)
        self.rowTokens = rowTokens
        self.rows = rows
    }

    /// First-fit decreasing: examples in order of decreasing length (equal lengths keep the
    /// order of `order`), each into the first row with room for it. Returns the rows as
    /// lists of example indices. The number and fill of the rows depend on the lengths
    /// alone, not on `order`. O(n log n): a max segment tree over the rows' free room finds
    /// the first row with room.
    public func packRows(_ lengths: [Int], order: [Int]) -> [[Int]] {
        precondition(order.count == lengths.count)
        let n = order.count
        guard n > 0 else { return [] }
        var rank = [Int](repeating: 0, count: n)
        for (i, e) in order.enumerated() { rank[e] = i }
        let sorted = order.sorted { (lengths[$0], rank[$1]) > (lengths[$1], rank[$0]) }
        var leaves = 1
        while leaves < n { leaves *= 2 }
        // tree[1] is the root; leaf i (row i) is tree[leaves + i], holding that row's free room.
        var tree = [Int](repeating: rowTokens, count: 2 * leaves)
        var rows: [[Int]] = []
        for e in sorted {
            let need = min(lengths[e], rowTokens)
            var node = 1
            while node < leaves { node = tree[2 * node] >= need ? 2 * node : 2 * node + 1 }
            let row = node - leaves
            if row == rows.count { rows.append([]) }
            rows[row].append(e)
            tree[node] -= need
            node /= 2
            while node >= 1 {
                tree[node] = max(tree[2 * node], tree[2 * node + 1])
                node /= 2
            }
        }
        return rows
    }

    /// The micro-batches of one epoch, each a list of rows of example indices: a seeded shuffle
    /// (so that equal-length examples meet different partners each epoch), first-fit
    /// decreasing into rows, rows sorted by fill and cut into micro-batches of `rows` (rows of
    /// a batch have similar lengths, so little padding is left), and the micro-batches
    /// shuffled. Deterministic for a given seed and epoch; the count is the same every epoch.
    public func batches(_ lengths: [Int], seed: UInt64, epoch: Int) -> [[[Int]]] {
        var rng = SplitMix64(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9 ^ 0x5041_434B)
        var order = Array(lengths.indices)
        order.shuffle(using: &rng)
        let packed = packRows(lengths, order: order)
        let fill = packed.map { $0.reduce(0) { $0 + lengths[$1] } }
        let byFill = packed.indices.sorted { (fill[$0], $1) > (fill[$1], $0) }
        var out: [[[Int]]] = []
        for start in stride(from: 0, to: byFill.count, by: rows) {
            out.append(byFill[start..<min(start + rows, byFill.count)].map { packed[$0] })
        }
        out.shuffle(using: &rng)
        return out
    }

    /// Micro-batches per epoch for these lengths.
    public func batchCount(_ lengths: [Int]) -> Int {
        (packRows(lengths, order: Array(lengths.indices)).count + rows - 1) / rows
    }
}
