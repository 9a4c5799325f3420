import MoEFormats
import MoEText
/// A right-padded batch of token sequences, laid out [B, T] row-major.
/// targets[b*T + t] is the token to predict after position t, or -1 where no
/// prediction counts (padding, the last position of an example, masked prompt tokens).
/// A packed batch holds several examples back to back in a row: `positions` gives each
/// token's position within its example (0 where an example starts), which RoPE uses and
/// which keeps attention inside each example.
public struct TokenBatch: Sendable {
    public let batch: Int
    public let seq: Int
    public let ids: [Int32]
    public let targets: [Int32]
    /// Unpadded length of each sequence (a packed row: the tokens of all its examples).
    public let lengths: [Int]
    /// [B*T] position of each token within its example; nil: row position t (one example a row).
    public let positions: [Int32]?

    public init(batch: Int, seq: Int, ids: [Int32], targets: [Int32], lengths: [Int], positions: [Int32]? = nil) {
        precondition(ids.count == batch * seq && targets.count == batch * seq && lengths.count == batch)
        precondition(positions.map { $0.count == batch * seq } ?? true)
        self.batch = batch; self.seq = seq; self.ids = ids; self.targets = targets; self.lengths = lengths
        self.positions = positions
        countedTokens = targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) }
    }

    /// Tokens a forward pass computes, padding included (B*T).
    public var computedTokens: Int { batch * seq }
    /// Tokens that are not padding.
    public var realTokens: Int { lengths.reduce(0, +) }

    /// Builds a batch from token sequences and, for each, which of its tokens count as
    /// predictions (counted[j] == true: predicting token j from tokens 0..<j counts).
    /// Padding uses token `pad` and never counts. Sequences must be non-empty.
    public init(sequences: [[Int32]], counted: [[Bool]], pad: Int32 = 0) {
        let b = sequences.count
        let t = max(1, sequences.map(\.count).max() ?? 1)
        var ids = [Int32](repeating: pad, count: b * t)
        var targets = [Int32](repeating: -1, count: b * t)
        for (i, s) in sequences.enumerated() {
            for (j, tok) in s.enumerated() { ids[i * t + j] = tok }
            for j in 1..<max(1, s.count) where counted[i][j] { targets[i * t + j - 1] = s[j] }
        }
        self.init(batch: b, seq: t, ids: ids, targets: targets, lengths: sequences.map(\.count))
    }

    /// Predictions that count toward the loss.
    public let countedTokens: Int
}
