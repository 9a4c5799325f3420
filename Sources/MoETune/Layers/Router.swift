import Foundation

/// Mixtral routing for N tokens over E experts, top-k:
///   probs [N, E] = softmax(logits) over all experts (fp32),
///   the k largest per token, their weights renormalised to sum to 1.
/// Then tokens are grouped by expert (a counting sort), so that each expert runs one
/// matrix product over exactly its tokens (dropless, MegaBlocks-style).
public struct RoutingBuffers {
    public let tokens: Int            // N capacity
    public let experts: Int           // E
    public let k: Int
    public let logits: FloatBuffer    // [N, E]
    public let probs: FloatBuffer     // [N, E]
    public let topExpert: UnsafeMutablePointer<Int32>  // [N, k], best first
    public let topWeight: FloatBuffer // [N, k], renormalised
    /// Assignments sorted by expert: assignment a (0..<N*k) is token assignToken[a],
    /// slot assignSlot[a] (which of its k choices); expert e owns a in
    /// expertStart[e]..<expertStart[e+1].
    public let assignToken: UnsafeMutablePointer<Int32>
    public let assignSlot: UnsafeMutablePointer<Int32>
    public let expertStart: UnsafeMutablePointer<Int>

    public init(tokens: Int, experts: Int, k: Int) {
        self.tokens = tokens; self.experts = experts; self.k = k
        logits = FloatBuffer(count: tokens * experts)
        probs = FloatBuffer(count: tokens * experts)
        topWeight = FloatBuffer(count: tokens * k)
        topExpert = .allocate(capacity: tokens * k)
        assignToken = .allocate(capacity: tokens * k)
        assignSlot = .allocate(capacity: tokens * k)
        expertStart = .allocate(capacity: experts + 1)
    }

    public func deallocate() {
        topExpert.deallocate(); assignToken.deallocate(); assignSlot.deallocate(); expertStart.deallocate()
    }

    /// Number of assignments of expert e.
    public func count(of e: Int) -> Int { expertStart[e + 1] - expertStart[e] }
}

/// Softmax, top-k, renormalise and group, for n tokens whose router logits are already
/// in r.logits. Ties pick the lower expert index.
public func routeTokens(_ r: RoutingBuffers, tokens n: Int) {
    let e = r.experts, k = r.k
    parallelChunks(n, minChunk: 64) { range in
        for i in range {
            let l = r.logits.pointer + i * e, p = r.probs.pointer + i * e
            var m = -Float.infinity
            for j in 0..<e { m = max(m, l[j]) }
            var sum: Float = 0
            for j in 0..<e { p[j] = Foundation.exp(l[j] - m); sum += p[j] }
            for j in 0..<e { p[j] /= sum }
            let te = r.topExpert + i * k, tw = r.topWeight.pointer + i * k
            var total: Float = 0
            for slot in 0..<k {
                // The first expert not yet taken, then any better one; NaN scores (from a
                // diverged run) never win a comparison, so a valid index is always chosen.
                var best = -1
                var bestP = -Float.infinity
                for j in 0..<e {
                    var taken = false
                    for s in 0..<slot where te[s] == Int32(j) { taken = true }
                    if taken { continue }
                    if best < 0 || p[j] > bestP { best = j; bestP = p[j] }
                }
                te[slot] = Int32(best)
                tw[slot] = bestP
                total += bestP
            }
            for slot in 0..<k { tw[slot] /= total }
        }
    }
    // Counting sort of the n*k assignments by expert; within an expert, token order.
    for j in 0...e { r.expertStart[j] = 0 }
    for a in 0..<(n * k) { r.expertStart[Int(r.topExpert[a]) + 1] += 1 }
    for j in 0..<e { r.expertStart[j + 1] += r.expertStart[j] }
    var fill = [Int](repeating: 0, count: e)
    for i in 0..<n {
        for slot in 0..<k {
            let ex = Int(r.topExpert[i * k + slot])
            let a = r.expertStart[ex] + fill[ex]
            fill[ex] += 1
            r.assignToken[a] = Int32(i)
            r.assignSlot[a] = Int32(slot)
        }
    }
}
