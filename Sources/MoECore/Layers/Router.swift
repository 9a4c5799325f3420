import Foundation
import MoEFormats
import MoEText

/// Runtime settings of the Mixture-of-Experts blocks (the `moe:` config section).
public struct MoEOptions: Equatable, Sendable {
    /// Switch-Transformer load-balancing loss coefficient (0: off).
    public var auxLossCoef: Float = 0
    /// ST-MoE router z-loss coefficient (0: off).
    public var zLossCoef: Float = 0
    /// nil: dropless. Otherwise each expert takes at most
    /// ceil(capacityFactor * tokens * k / E) assignments per batch, in token order.
    public var capacityFactor: Double?
    /// Mixtral-style multiplicative jitter 1 ± eps on the MoE block input (training only).
    public var jitter: Float = 0
    /// Shazeer-style noisy top-k: Gaussian noise times this std added to the router
    /// logits before softmax and top-k (training only; 0: off).
    public var noiseStd: Float = 0
    /// Learn the noise scale per token and expert: std = noiseStd * softplus(x W_noise^T) / ln 2,
    /// W_noise [E, H] trained from zeros (so it starts at noiseStd).
    public var learnedNoise = false
    /// True while training: noise and jitter apply only then.
    public var training = false
    /// Sum each expert's routing weight x the L2 norm of its output over the tokens routed to
    /// it (RoutingBuffers.outputNormSum; REAP's saliency). Off by default: it costs a pass
    /// over the experts' output rows.
    public var expertOutputNorms = false
    /// Seeds the noise; the trainer advances `step` so every micro-batch draws anew.
    public var seed: UInt64 = 0
    public var step = 0

    public init() {}
}

/// Mixtral routing for N tokens over E experts, top-k:
///   probs [N, E] = softmax(logits (+ noise)) over all experts (fp32),
///   the k largest per token, their weights renormalised to sum to 1.
/// Then the kept assignments are grouped by expert (a counting sort), so that each expert
/// runs one matrix product over exactly its tokens. Padding tokens are routed (for
/// statistics they do not count) but get no expert. With a capacity, assignments past
/// an expert's capacity are dropped: that expert adds nothing for the token.
public final class RoutingBuffers {
    public let tokens: Int            // N capacity
    public let experts: Int           // E
    public let k: Int
    public let logits: FloatBuffer    // [N, E] router output (the gate, with its LoRA)
    public let noise: FloatBuffer     // [N, E] standard normal draws when noisy top-k is on
    public let noisePre: FloatBuffer  // [N, E] x W_noise^T when the noise scale is learned
    public let probs: FloatBuffer     // [N, E]
    public let lse: FloatBuffer       // [N] logsumexp of the (noisy) logits, for the z-loss
    public let topExpert: UnsafeMutablePointer<Int32>  // [N, k], best first
    public let topWeight: FloatBuffer // [N, k], renormalised
    public let slotKept: UnsafeMutablePointer<Bool>    // [N, k] false: padding or over capacity
    /// Kept assignments sorted by expert: assignment a (0..<assignCount) is token
    /// assignToken[a], slot assignSlot[a]; expert e owns expertStart[e]..<expertStart[e+1].
    public let assignToken: UnsafeMutablePointer<Int32>
    public let assignSlot: UnsafeMutablePointer<Int32>
    public let expertStart: UnsafeMutablePointer<Int>
    public private(set) var assignCount = 0
    /// Renormalise the k weights to sum to 1 (Mixtral; norm_topk_prob); else they are the
    /// softmax probabilities themselves.
    public var normalize = true
    /// DeepSeek-V2: the k weights times `scale` (routed_scaling_factor), and with `groups`
    /// only experts of the topGroups groups with the highest best probability are chosen
    /// (group_limited_greedy).
    public var scale: Float = 1
    public var groups: ExpertGroups? = nil

    /// The family's routing rules from the model config.
    package func configure(_ c: ModelConfig) {
        normalize = c.normTopKProb
        scale = c.routedScalingFactor
        groups = c.expertGroups
    }

    // Statistics of the last routing, over valid (non-padding) tokens.
    public private(set) var validTokens = 0
    /// Assignments chosen per expert (before capacity) [E].
    public private(set) var selected: [Int]
    public private(set) var dropped = 0
    /// Sums over valid tokens: router probability per expert [E], entropy, lse^2.
    public private(set) var probSum: [Double]
    /// Sums over valid tokens of each expert's final routing weight (topWeight; 0 where not chosen) [E].
    public private(set) var gateSum: [Double]
    /// With MoEOptions.expertOutputNorms: sums over the kept assignments of each expert of its
    /// routing weight (topWeight without `scale`) x the L2 norm of its output row (before the
    /// weight), written by moeForward [E]; zero otherwise.
    public let outputNormSum: UnsafeMutablePointer<Double>
    public private(set) var entropySum = 0.0
    public private(set) var zSum = 0.0

    /// [2, E] the per-expert load and fill counts of `route` (kept: routing allocates nothing).
    private let counts: UnsafeMutablePointer<Int>

    public init(tokens: Int, experts: Int, k: Int) {
        self.tokens = tokens; self.experts = experts; self.k = k
        logits = FloatBuffer(count: tokens * experts)
        noise = FloatBuffer(count: tokens * experts)
        noisePre = FloatBuffer(count: tokens * experts)
        probs = FloatBuffer(count: tokens * experts)
        lse = FloatBuffer(count: tokens)
        topWeight = FloatBuffer(count: tokens * k)
        topExpert = .allocate(capacity: tokens * k)
        slotKept = .allocate(capacity: tokens * k)
        assignToken = .allocate(capacity: tokens * k)
        assignSlot = .allocate(capacity: tokens * k)
        expertStart = .allocate(capacity: experts + 1)
        counts = .allocate(capacity: 2 * experts)
        outputNormSum = .allocate(capacity: experts)
        outputNormSum.initialize(repeating: 0, count: experts)
        selected = Array(repeating: 0, count: experts)
        probSum = Array(repeating: 0, count: experts)
        gateSum = Array(repeating: 0, count: experts)
    }

    deinit {
        topExpert.deallocate(); slotKept.deallocate(); assignToken.deallocate(); assignSlot.deallocate()
        expertStart.deallocate(); counts.deallocate(); outputNormSum.deallocate()
    }

    /// Number of kept assignments of expert e.
    public func count(of e: Int) -> Int { expertStart[e + 1] - expertStart[e] }

    /// Softmax, top-k, renormalise, capacity and grouping, for n tokens whose router
    /// logits are in `logits`. valid[i] is false for padding. Ties pick the lower index.
    public func route(tokens n: Int, valid: UnsafePointer<Bool>, options o: MoEOptions, layer: Int) {
        let e = experts, k = self.k
        let noisy = o.training && o.noiseStd > 0
        if noisy {
            var rng = SplitMix64(seed: mixBits(o.seed ^ UInt64(o.step) &* 0x2545_F491 ^ UInt64(layer) &* 0x9E37_79B9))
            for i in 0..<(n * e) { noise[i] = rng.nextGaussian() }
        }
        let logits = self.logits.pointer, noise = self.noise.pointer, probs = self.probs.pointer
        let topExpert = self.topExpert, topWeight = self.topWeight.pointer, lse = self.lse.pointer
        let std = o.noiseStd, learned = o.learnedNoise, normalize = self.normalize, scale = self.scale, groups = self.groups
        let pre = noisePre.pointer, c = o.noiseStd / Float(M_LN2)
        parallelChunks(n, minChunk: 64) { range in
            for i in range {
                let l = logits + i * e, p = probs + i * e, z = noise + i * e, a = pre + i * e
                var m = -Float.infinity
                for j in 0..<e {
                    if noisy {
                        let scale = learned ? c * softplus(a[j]) : std
                        p[j] = l[j] + scale * z[j]
                    } else {
                        p[j] = l[j]
                    }
                    m = max(m, p[j])
                }
                var sum: Float = 0
                for j in 0..<e { p[j] = Foundation.exp(p[j] - m); sum += p[j] }
                for j in 0..<e { p[j] /= sum }
                lse[i] = m + Foundation.log(sum)
                let te = topExpert + i * k, tw = topWeight + i * k
                var total: Float = 0
                // Group-limited greedy: a bit per group that may be chosen (groups <= 64).
                var allowed = UInt64.max
                if let g = groups {
                    let size = e / g.groups
                    allowed = 0
                    for _ in 0..<g.topGroups {
                        var best = -1, bestScore = -Float.infinity
                        for grp in 0..<g.groups where allowed & (1 << UInt64(grp)) == 0 {
                            var m: Float = -Float.infinity
                            for j in (grp * size)..<((grp + 1) * size) { m = max(m, p[j]) }
                            if best < 0 || m > bestScore { best = grp; bestScore = m }
                        }
                        allowed |= 1 << UInt64(best)
                    }
                }
                let groupSize = groups.map { e / $0.groups } ?? e
                for slot in 0..<k {
                    // The first expert not yet taken, then any better one; NaN scores (from
                    // a diverged run) never win a comparison, so an index is always chosen.
                    var best = -1
                    var bestP = -Float.infinity
                    for j in 0..<e {
                        var taken = false
                        for s in 0..<slot where te[s] == Int32(j) { taken = true }
                        if taken || allowed & (1 << UInt64(j / groupSize)) == 0 { continue }
                        if best < 0 || p[j] > bestP { best = j; bestP = p[j] }
                    }
                    te[slot] = Int32(best)
                    tw[slot] = bestP
                    total += bestP
                }
                if normalize { for slot in 0..<k { tw[slot] /= total } }
                if scale != 1 { for slot in 0..<k { tw[slot] *= scale } }
            }
        }
        gatherStatistics(tokens: n, valid: valid)
        assign(tokens: n, valid: valid, capacityFactor: o.capacityFactor)
    }

    /// Over valid tokens: how many, and per expert the selections, probability and gate
    /// sums; the entropy and squared log-sum-exp sums.
    private func gatherStatistics(tokens n: Int, valid: UnsafePointer<Bool>) {
        let e = experts, k = self.k, probs = self.probs.pointer, lse = self.lse.pointer, topWeight = self.topWeight.pointer
        validTokens = 0
        for j in 0..<e { selected[j] = 0; probSum[j] = 0; gateSum[j] = 0; outputNormSum[j] = 0 }
        entropySum = 0
        zSum = 0
        for i in 0..<n where valid[i] {
            validTokens += 1
            let p = probs + i * e
            var h = 0.0
            for j in 0..<e {
                probSum[j] += Double(p[j])
                if p[j] > 0 { h -= Double(p[j]) * Foundation.log(Double(p[j])) }
            }
            entropySum += h
            zSum += Double(lse[i]) * Double(lse[i])
            for s in 0..<k {
                let ex = Int(topExpert[i * k + s])
                selected[ex] += 1
                gateSum[ex] += Double(topWeight[i * k + s])
            }
        }
    }

    /// Capacity (a factor of the fair share of valid assignments), in token order, then the
    /// counting sort of the kept assignments by expert (expertStart, assignToken, assignSlot).
    private func assign(tokens n: Int, valid: UnsafePointer<Bool>, capacityFactor: Double?) {
        let e = experts, k = self.k
        let capacity: Int
        if let f = capacityFactor {
            capacity = max(1, Int((f * Double(validTokens * k) / Double(e)).rounded(.up)))
        } else {
            capacity = Int.max
        }
        let load = counts, fill = counts + e
        load.update(repeating: 0, count: 2 * e)
        dropped = 0
        for i in 0..<n {
            for s in 0..<k {
                let ex = Int(topExpert[i * k + s])
                var keep = valid[i]
                if keep, load[ex] >= capacity { keep = false; dropped += 1 }
                if keep { load[ex] += 1 }
                slotKept[i * k + s] = keep
            }
        }
        expertStart[0] = 0
        for j in 0..<e { expertStart[j + 1] = expertStart[j] + load[j] }
        assignCount = expertStart[e]
        for i in 0..<n {
            for s in 0..<k where slotKept[i * k + s] {
                let ex = Int(topExpert[i * k + s])
                let a = expertStart[ex] + fill[ex]
                fill[ex] += 1
                assignToken[a] = Int32(i)
                assignSlot[a] = Int32(s)
            }
        }    }
}

@inline(__always)
package func softplus(_ x: Float) -> Float { x > 20 ? x : Foundation.log1p(Foundation.exp(x)) }

extension SplitMix64 {
    /// A standard normal draw (Box-Muller).
    public mutating func nextGaussian() -> Float {
        let u1 = max(Double(next() >> 11) * 0x1.0p-53, 1e-300), u2 = Double(next() >> 11) * 0x1.0p-53
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }
}
