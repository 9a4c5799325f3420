/// Prompts admitted together that begin alike (a chat template's header, a few-shot
/// preamble, "What is the capital of"): each group's common prefix is prefilled once, in its
/// first member's slot, copied into the other members' caches (Decoder.copyPrefix), and every
/// member then feeds only the rest of its prompt. The keys and values of a prefix depend on
/// its tokens alone (causal attention), so a copied prefix is the one each prompt would have
/// computed, up to the rounding of a product over a different set of rows.
public struct PrefixGroup: Sendable, Equatable {
    /// Indices of the prompts that share the prefix; the first one computes it.
    public var members: [Int]
    /// Tokens they share (each member keeps at least its last token to feed).
    public var length: Int

    /// Tokens not prefilled thanks to the group.
    public var savedTokens: Int { (members.count - 1) * length }
}

public enum SharedPrefix {
    /// Groups of prompts sharing at least `minimum` leading tokens, chosen to save the most
    /// prefilled tokens: the prompts sorted (so prompts that share a prefix are neighbours),
    /// then split into runs of neighbours by dynamic programming, a run of s prompts whose
    /// common prefix is L tokens saving (s - 1) L. A prompt in no group is fed whole. Each
    /// member keeps its last token out of the prefix, since that token's row gives the
    /// logits of the first new one. O(n^2) for n prompts (n is at most the decoder's slots).
    public static func groups(_ prompts: [[Int32]], minimum: Int = 1) -> [PrefixGroup] {
        let order = prompts.indices.sorted { prompts[$0].lexicographicallyPrecedes(prompts[$1]) }
        guard order.count > 1 else { return [] }
        // shared[j]: the tokens sorted prompts j and j + 1 may share.
        let shared = (0..<order.count - 1).map { j in common(prompts[order[j]], prompts[order[j + 1]]) }
        let cut = bestRuns(shared, count: order.count, minimum: max(1, minimum))
        var groups: [PrefixGroup] = [], end = order.count
        while end > 0 {
            let start = cut[end]
            if end - start > 1 {
                groups.append(PrefixGroup(members: order[start..<end].sorted(), length: shared[start..<end - 1].min()!))
            }
            end = start
        }
        return groups.sorted { $0.members[0] < $1.members[0] }
    }

    /// Leading tokens a and b have in common, leaving each at least its last token.
    static func common(_ a: [Int32], _ b: [Int32]) -> Int {
        let limit = min(a.count, b.count) - 1
        var n = 0
        while n < limit, a[n] == b[n] { n += 1 }
        return max(0, n)
    }

    /// cut[i]: where the last run of the best split of the first i sorted prompts starts.
    /// best[i] = max(best[i-1], max over j of best[j] + (i - j - 1) * min(shared[j..<i-1]))
    /// with that minimum at least `minimum`.
    static func bestRuns(_ shared: [Int], count n: Int, minimum: Int) -> [Int] {
        var best = [Int](repeating: 0, count: n + 1), cut = Array(0...n)
        for i in 1...n {
            best[i] = best[i - 1]
            cut[i] = i - 1
            var length = Int.max
            for j in stride(from: i - 2, through: 0, by: -1) {
                length = min(length, shared[j])
                if length < minimum { break }
                let saved = best[j] + (i - j - 1) * length
                if saved > best[i] { best[i] = saved; cut[i] = j }
            }
        }
        return cut
    }
}
