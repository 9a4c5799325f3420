import Foundation

/// GRPO's settings that the loss reads (the grpo: section's, TRL's GRPOConfig names).
package struct GRPOLossSettings: Sendable, Equatable {
    package var loss: TrainConfig.GRPOLossName = .grpo
    package var epsilonLow = 0.2
    package var epsilonHigh = 0.2
    package var beta = 0.0
    /// max_new_tokens: dr_grpo divides by completions x this.
    package var maxCompletionLength = 256

    package init(loss: TrainConfig.GRPOLossName = .grpo, epsilonLow: Double = 0.2, epsilonHigh: Double = 0.2, beta: Double = 0,
                 maxCompletionLength: Int = 256) {
        self.loss = loss; self.epsilonLow = epsilonLow; self.epsilonHigh = epsilonHigh; self.beta = beta
        self.maxCompletionLength = maxCompletionLength
    }
}

/// One completion's per-token log-probabilities: the policy's now (logps), the policy's when
/// it was sampled (old; nil: this very forward, detached, so every ratio is 1) and the
/// reference's (beta > 0), with its advantage.
package struct GRPOSequence: Sendable {
    package var logps: [Double]
    package var old: [Double]?
    package var ref: [Double]?
    package var advantage: Double

    package init(logps: [Double], old: [Double]? = nil, ref: [Double]? = nil, advantage: Double) {
        self.logps = logps; self.old = old; self.ref = ref; self.advantage = advantage
    }
}

/// A micro-batch's loss, d loss / d logp of every completion token, and TRL's metrics of it.
package struct GRPOMicroLoss: Sendable {
    package var loss: Double
    package var dLogps: [[Double]]
    package var metrics: [String: Double]
}

/// GRPO's loss as TRL 1.16 defines it (trl/trainer/grpo_trainer.py `_compute_loss`, token-level
/// importance sampling, no vLLM, no entropy mask), forward and hand-derived backward.
///
/// Per completion token t of completion i, with logp = log p_θ(t) at temperature T (the policy's
/// logits / T), old = the sampling policy's, ref = the reference's, A_i the advantage:
///   r = exp(logp - old),  c = clamp(r, 1 - ε_low, 1 + ε_high)
///   ℓ = -min(r A, c A) + β r k3,   k3 = exp(ref - logp) - (ref - logp) - 1
/// (the KL estimate k3 times the ratio: TRL 1.16's use_bias_correction_kl, on by default)
/// Backward (torch's conventions): min passes the gradient to the smaller argument, half to each
/// on a tie; clamp passes it inside [lo, hi] (bounds included), 0 outside. Inside the bounds
/// c = r, a tie: dℓ/dlogp = -A r (both halves). Outside, the smaller of r A and c A wins: r A
/// gives -A r, the clamped c A gives 0 (the token is "clipped"). With dr/dlogp = r and
/// dk3/dlogp = 1 - exp(ref - logp): d(r k3)/dlogp = r (k3 + 1 - exp(ref - logp)).
/// The micro-batch's loss by loss type, n_i the completion's tokens, B the completions:
///   grpo:    L = (1/B) Σ_i (1/max(n_i, 1)) Σ_t ℓ_it      dL/dlogp_it = dℓ_it / (B max(n_i, 1))
///   bnpo:    L = Σ_it ℓ_it / max(Σ_i n_i, 1)              dL/dlogp_it = dℓ_it / max(Σ n, 1)
///   dr_grpo: L = Σ_it ℓ_it / (B max_completion_length)    dL/dlogp_it = dℓ_it / (B L_max)
/// A step of grad_accum micro-batches takes their mean (TRL divides each by the accumulation steps).
/// Metrics (TRL's names): kl (β > 0: the mean of r k3) and clip_ratio/{low,high,region}_mean, means over the
/// micro-batch's tokens; clip_ratio/low_min and clip_ratio/high_max, over the completions'
/// per-completion means. Low-clipped: r < 1 - ε_low and A < 0; high: r > 1 + ε_high and A > 0.
package enum GRPOLoss {
    /// One token: ℓ, dℓ/dlogp, k3 (0 without a reference), and whether it is clipped low / high.
    static func token(logp: Double, old: Double, ref: Double?, advantage a: Double, _ s: GRPOLossSettings)
        -> (loss: Double, d: Double, kl: Double, low: Bool, high: Bool) {
        let r = exp(logp - old)
        let lo = 1 - s.epsilonLow, hi = 1 + s.epsilonHigh
        let c = min(max(r, lo), hi)
        let u = r * a, v = c * a
        var loss = -min(u, v)
        var d: Double
        if u == v {
            // A tie: half through r A, half through c A (which passes only inside the bounds).
            d = -0.5 * a * r - ((r >= lo && r <= hi) ? 0.5 * a * r : 0)
        } else if u < v {
            d = -a * r
        } else {
            d = (r >= lo && r <= hi) ? -a * r : 0
        }
        var kl = 0.0
        if let ref, s.beta != 0 {
            // TRL 1.16's use_bias_correction_kl (its default): k3 times the ratio, d(r k3) = r (k3 + dk3).
            let x = ref - logp, k3 = exp(x) - x - 1
            kl = r * k3
            loss += s.beta * kl
            d += s.beta * r * (k3 + 1 - exp(x))
        }
        return (loss, d, kl, r < lo && a < 0, r > hi && a > 0)
    }

    /// The loss of one micro-batch of completions, d L / d logp per token, and its metrics.
    package static func microBatch(_ seqs: [GRPOSequence], _ s: GRPOLossSettings) -> GRPOMicroLoss {
        let b = Double(max(seqs.count, 1))
        let tokens = seqs.reduce(0) { $0 + $1.logps.count }
        var total = 0.0, kl = 0.0, low = 0, high = 0, region = 0
        var lowMin = Double.infinity, highMax = -Double.infinity
        var d: [[Double]] = []
        for q in seqs {
            let n = q.logps.count
            // The weight of each token's ℓ in L (above).
            let w: Double
            switch s.loss {
            case .grpo: w = 1 / (b * Double(max(n, 1)))
            case .bnpo: w = 1 / Double(max(tokens, 1))
            case .drGRPO: w = 1 / (b * Double(s.maxCompletionLength))
            }
            var row = [Double](repeating: 0, count: n), seqSum = 0.0, seqLow = 0, seqHigh = 0
            for t in 0..<n {
                let x = token(logp: q.logps[t], old: q.old?[t] ?? q.logps[t], ref: q.ref?[t], advantage: q.advantage, s)
                seqSum += x.loss
                row[t] = w * x.d
                kl += x.kl
                if x.low { low += 1; seqLow += 1 }
                if x.high { high += 1; seqHigh += 1 }
                if x.low || x.high { region += 1 }
            }
            total += w * seqSum
            d.append(row)
            // masked_seq_mean: 0/0 is nan for an empty completion, which nanmin/nanmax skip.
            if n > 0 {
                lowMin = min(lowMin, Double(seqLow) / Double(n))
                highMax = max(highMax, Double(seqHigh) / Double(n))
            }
        }
        let nt = Double(max(tokens, 1))
        var metrics = ["clip_ratio/low_mean": Double(low) / nt, "clip_ratio/high_mean": Double(high) / nt,
                       "clip_ratio/region_mean": Double(region) / nt,
                       "clip_ratio/low_min": lowMin.isFinite ? lowMin : 0, "clip_ratio/high_max": highMax.isFinite ? highMax : 0]
        if s.beta != 0 { metrics["kl"] = kl / nt }
        return GRPOMicroLoss(loss: total, dLogps: d, metrics: metrics)
    }

    /// Advantages of rewards laid out group by group (group_size consecutive completions a
    /// prompt), as TRL's sum_then_normalize: A = r - mean of the group, divided by (std + 1e-4)
    /// where std is the group's (group) or the whole batch's (batch) unbiased standard deviation
    /// (TRL's nanstd, Bessel-corrected); none: not divided.
    package static func advantages(_ rewards: [Double], groupSize g: Int, scale: TrainConfig.GRPOScaleRewards) -> [Double] {
        precondition(g > 0 && rewards.count % g == 0)
        func std(_ x: ArraySlice<Double>) -> Double {
            guard x.count > 1 else { return 0 }
            let m = x.reduce(0, +) / Double(x.count)
            return (x.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(x.count - 1)).squareRoot()
        }
        let batchStd = std(rewards[...])
        var out = [Double](repeating: 0, count: rewards.count)
        for start in stride(from: 0, to: rewards.count, by: g) {
            let group = rewards[start..<(start + g)]
            let mean = group.reduce(0, +) / Double(g)
            let sd = scale == .group ? std(group) : batchStd
            for i in start..<(start + g) {
                out[i] = scale == .none ? rewards[i] - mean : (rewards[i] - mean) / (sd + 1e-4)
            }
        }
        return out
    }

    /// Mean and unbiased standard deviation (TRL's nanstd; 0 for fewer than two values).
    package static func meanStd(_ x: [Double]) -> (mean: Double, std: Double) {
        guard !x.isEmpty else { return (0, 0) }
        let m = x.reduce(0, +) / Double(x.count)
        guard x.count > 1 else { return (m, 0) }
        return (m, (x.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(x.count - 1)).squareRoot())
    }
}
