/// Prompts admitted together that begin alike (a chat template's header, a few-shot
/// preamble, "What is the capital of", a GRPO group's copies of one prompt) have their
/// common prefixes computed once: the prompts form a prefix tree, each branch of it is
/// prefilled once in the slot of its first prompt, and every prompt copies the keys and
/// values of its longest shared prefix (Decoder.copyPrefix) before feeding the rest. The
/// keys and values of a prefix depend on its tokens alone (causal attention), so a copied
/// prefix is the one each prompt would have computed, up to the rounding of a product over
/// a different set of rows.
public struct PrefixPlan: Sendable, Equatable {
    /// Prompt `member`'s tokens from..<to, fed into its slot after the first `from`
    /// positions are copied from prompt `source`'s slot (nil: nothing copied, from 0).
    public struct Segment: Sendable, Equatable {
        public var member: Int
        public var source: Int?
        public var from: Int
        public var to: Int

        public init(member: Int, source: Int?, from: Int, to: Int) {
            self.member = member
            self.source = source
            self.from = from
            self.to = to
        }
    }

    /// The shared branches, level by level (a level's segments in one prefill, their logits
    /// unused); every segment's source was filled by an earlier level.
    public var rounds: [[Segment]] = []
    /// Each prompt's last segment, in prompt order (one prefill: the logits of its last row
    /// pick the first new token).
    public var finals: [Segment] = []

    /// Tokens each prompt feeds in its own slot (the branches it leads and its last segment),
    /// in prompt order; the rest of its prompt is copied.
    public var fedTokens: [Int] {
        var fed = [Int](repeating: 0, count: finals.count)
        for s in rounds.joined() + finals { fed[s.member] += s.to - s.from }
        return fed
    }

    /// Tokens fed, of all the prompts' tokens.
    public var computedTokens: Int { fedTokens.reduce(0, +) }
}

public enum SharedPrefix {
    /// Levels of branches at most: each level is one more prefill call (a pass over every
    /// weight), so prompts that are prefixes of one another (k-shot with growing k) stop here.
    public static let maxLevels = 4
    /// Prompt tokens a branch must save ((prompts - 1) x its length) to be fed on its own.
    public static let minimumSaved = 2

    /// The plan for `prompts`: a branch where two or more prompts go on alike is fed once
    /// (`share`). Each prompt keeps its last token out of every shared branch, since that
    /// token's row gives the logits of its first new token. Prompt i's slot may already hold
    /// its first held[i] tokens (a finished sequence's, BatchGenerator.reuseFinished): such a
    /// prompt feeds only the rest and takes no part in the tree.
    public static func plan(_ prompts: [[Int32]], held: [Int]? = nil, share: Bool = true) -> PrefixPlan {
        var plan = PrefixPlan()
        let held = held ?? Array(repeating: 0, count: prompts.count)
        plan.finals = prompts.indices.map { PrefixPlan.Segment(member: $0, source: nil, from: held[$0], to: prompts[$0].count) }
        let fresh = prompts.indices.filter { held[$0] == 0 }
        if share, fresh.count > 1 { branch(fresh, depth: 0, source: nil, level: 0, prompts: prompts, into: &plan) }
        return plan
    }

    /// The prompts `members` share their first `depth` tokens, held in prompt `source`'s slot:
    /// groups them by their next token; a group of two or more becomes a branch to its
    /// longest common prefix, fed in its first member's slot, and is split again; a prompt
    /// alone, or one with nothing more to share (or a branch below `minimumSaved` or past
    /// `maxLevels`), feeds its rest after copying `depth` tokens.
    static func branch(_ members: [Int], depth: Int, source: Int?, level: Int, prompts: [[Int32]],
                       into plan: inout PrefixPlan) {
        var groups: [Int32: [Int]] = [:], order: [Int32] = []
        for m in members {
            guard prompts[m].count - 1 > depth else { plan.finals[m].source = source; plan.finals[m].from = depth; continue }
            let token = prompts[m][depth]
            if groups[token] == nil { order.append(token) }
            groups[token, default: []].append(m)
        }
        for token in order {
            let group = groups[token]!
            guard group.count > 1 else { plan.finals[group[0]].source = source; plan.finals[group[0]].from = depth; continue }
            let end = commonLength(group, from: depth, prompts: prompts)
            guard level < maxLevels, (group.count - 1) * (end - depth) >= minimumSaved else {
                for m in group { plan.finals[m].source = source; plan.finals[m].from = depth }
                continue
            }
            if plan.rounds.count == level { plan.rounds.append([]) }
            plan.rounds[level].append(PrefixPlan.Segment(member: group[0], source: source, from: depth, to: end))
            branch(group, depth: end, source: group[0], level: level + 1, prompts: prompts, into: &plan)
        }
    }

    /// The tokens every prompt of `group` has alike (they agree up to `from` and at `from`),
    /// each keeping its last token.
    static func commonLength(_ group: [Int], from: Int, prompts: [[Int32]]) -> Int {
        let first = prompts[group[0]]
        var end = group.map { prompts[$0].count - 1 }.min()!
        for m in group.dropFirst() {
            var n = from
            while n < end, prompts[m][n] == first[n] { n += 1 }
            end = n
        }
        return end
    }
}
