import Foundation

/// One pair's completion log-probabilities: the policy's sums over the completion tokens,
/// the reference's (DPO; the base with the adapter off), and the completion token counts.
package struct PairLogps: Sendable, Equatable {
    package var chosen: Double
    package var rejected: Double
    package var refChosen = 0.0
    package var refRejected = 0.0
    package var chosenTokens: Int
    package var rejectedTokens: Int

    package init(chosen: Double, rejected: Double, refChosen: Double = 0, refRejected: Double = 0, chosenTokens: Int, rejectedTokens: Int) {
        self.chosen = chosen; self.rejected = rejected; self.refChosen = refChosen; self.refRejected = refRejected
        self.chosenTokens = chosenTokens; self.rejectedTokens = rejectedTokens
    }
}

/// Per pair: the preference loss, its derivative with respect to the pair's summed chosen
/// and rejected completion log-probabilities (the only way the loss depends on the model),
/// and the per-pair values TRL averages into its metrics.
package struct PairLoss: Sendable {
    package var loss: Double
    package var dChosen: Double
    package var dRejected: Double
    package var metrics: [(String, Double)]
}

/// The preference losses as TRL 1.16 defines them (trl/trainer/dpo_trainer.py `_compute_loss`,
/// trl/experimental/orpo/orpo_trainer.py `odds_ratio_loss`), one pair at a time; the batch
/// loss is the mean over pairs. Forward and the hand-derived backward side by side.
package enum PreferenceLoss {
    /// log sigmoid(x), stable for either sign.
    static func logSigmoid(_ x: Double) -> Double { x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)) }
    static func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }
    /// log(1 - e^x) for x < 0, as TRL's log1mexp (branch at -ln 2).
    static func log1mexp(_ x: Double) -> Double { x < -0.6931471805599453 ? log1p(-exp(x)) : log(-expm1(x)) }

    /// DPO. With Δc = c - c_ref, Δr = r - r_ref (summed log-probs) and d = Δc - Δr, z = β d:
    ///   sigmoid: ℓ = -(1-ε) logσ(z) - ε logσ(-z)        (ε = label_smoothing; ε = 0 is TRL 1.16's
    ///            sigmoid, ε > 0 conservative DPO as TRL 0.x wrote it)
    ///            dℓ/dz = (1-ε)(σ(z) - 1) + ε σ(z) = σ(z) - (1-ε)
    ///   robust:  ℓ = (-(1-ε) logσ(z) + ε logσ(-z)) / (1-2ε)
    ///            dℓ/dz = ((1-ε)(σ(z) - 1) - ε σ(z)) / (1-2ε) = σ(z) - (1-ε)/(1-2ε)
    ///   hinge:   ℓ = relu(1 - z); dℓ/dz = -1 where 1 - z > 0, else 0 (torch's relu gradient)
    ///   then dℓ/dc = β dℓ/dz, dℓ/dr = -β dℓ/dz.
    ///   ipo:     h = Δc/nc - Δr/nr (TRL divides by the completion lengths, at least 1);
    ///            ℓ = (h - 1/(2β))², dℓ/dh = 2(h - 1/(2β)), dℓ/dc = dℓ/dh / nc, dℓ/dr = -dℓ/dh / nr.
    /// Metrics: rewards β Δc and β Δr, their margin and order, and the summed log-probs.
    package static func dpo(_ p: PairLogps, loss: TrainConfig.DPOLossName, beta: Double, labelSmoothing eps: Double) -> PairLoss {
        let dc = p.chosen - p.refChosen, dr = p.rejected - p.refRejected
        let z = beta * (dc - dr)
        var l: Double, dC: Double, dR: Double
        switch loss {
        case .sigmoid, .robust, .hinge:
            let dz: Double
            switch loss {
            case .sigmoid:
                l = -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z)
                dz = sigmoid(z) - (1 - eps)
            case .robust:
                l = (-(1 - eps) * logSigmoid(z) + eps * logSigmoid(-z)) / (1 - 2 * eps)
                dz = sigmoid(z) - (1 - eps) / (1 - 2 * eps)
            default:
                l = max(0, 1 - z)
                dz = 1 - z > 0 ? -1 : 0
            }
            (dC, dR) = (beta * dz, -beta * dz)
        case .ipo:
            let nc = Double(max(p.chosenTokens, 1)), nr = Double(max(p.rejectedTokens, 1))
            let h = dc / nc - dr / nr, e = h - 1 / (2 * beta)
            l = e * e
            (dC, dR) = (2 * e / nc, -2 * e / nr)
        }
        let rc = beta * dc, rr = beta * dr
        return PairLoss(loss: l, dChosen: dC, dRejected: dR, metrics: [
            ("rewards/chosen", rc), ("rewards/rejected", rr), ("rewards/accuracies", rc > rr ? 1 : 0),
            ("rewards/margins", rc - rr), ("logps/chosen", p.chosen), ("logps/rejected", p.rejected),
        ])
    }

    /// ORPO's odds-ratio term (the NLL on the chosen sequence is added by the caller, token by
    /// token). With a = c/nc and b = r/nr (log-probs averaged over the completion tokens):
    ///   lo = (a - b) - (log(1 - e^a) - log(1 - e^b)),  ℓ = -β logσ(lo)   (TRL: loss = nll - mean(β logσ(lo)))
    ///   dℓ/dlo = -β σ(-lo);  dlo/da = 1 + e^a/(1 - e^a) = 1/(1 - e^a);  dlo/db = -1/(1 - e^b)
    ///   dℓ/dc = dℓ/dlo · dlo/da / nc,  dℓ/dr = dℓ/dlo · dlo/db / nr.
    /// Metrics as TRL names them: rewards β a and β b, logps a and b, log_odds_ratio logσ(lo),
    /// log_odds_chosen lo (both averaged over pairs by the caller).
    package static func orpo(_ p: PairLogps, beta: Double) -> PairLoss {
        let nc = Double(max(p.chosenTokens, 1)), nr = Double(max(p.rejectedTokens, 1))
        let a = p.chosen / nc, b = p.rejected / nr
        let lo = (a - b) - (log1mexp(a) - log1mexp(b))
        let ratio = logSigmoid(lo)
        let dlo = -beta * sigmoid(-lo)
        let dC = dlo * (-1 / expm1(a)) / nc, dR = dlo * (1 / expm1(b)) / nr
        let rc = beta * a, rr = beta * b
        return PairLoss(loss: -beta * ratio, dChosen: dC, dRejected: dR, metrics: [
            ("rewards/chosen", rc), ("rewards/rejected", rr), ("rewards/accuracies", rc > rr ? 1 : 0),
            ("rewards/margins", rc - rr), ("logps/chosen", a), ("logps/rejected", b),
            ("log_odds_ratio", ratio), ("log_odds_chosen", lo),
        ])
    }
}
