import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// What one micro-batch of pairs gave: each pair's loss and metric values, and (ORPO) the
/// summed NLL of the chosen sequences and its token count.
package struct PreferenceMicroResult {
    package var pairs: [PairLoss] = []
    package var nllSum = 0.0
    package var nllTokens = 0
}

/// Forward, loss and backward of DPO / ORPO on one micro-batch of pairs (PreferenceBatch:
/// rows 0..<P prompt + chosen, P..<2P prompt + rejected).
///
/// The backward. The objective of a step is J = (1/P_step) Σ_i ℓ_i (+ ORPO's NLL), and ℓ_i
/// depends on the model only through the pair's summed completion log-probabilities
/// c_i = Σ_{t ∈ chosen_i} log p(t) and r_i (PreferenceLoss gives dℓ_i/dc_i and dℓ_i/dr_i).
/// The head computes each scored position's cross-entropy CE_t = -log p(t), so
///   dJ/dCE_t = -(1/P_step) dℓ_i/dc_i   for t a chosen completion token of pair i,
///   dJ/dCE_t = -(1/P_step) dℓ_i/dr_i   for t a rejected completion token of pair i,
/// and ORPO's NLL, the mean over the step's N_nll chosen-sequence predictions (prompt included,
/// as TRL takes it), adds 1/N_nll to every position of a chosen row. These per-position weights
/// go into the cross-entropy backward as per-row scales (ForwardState.headRowScales): the same
/// softmax-minus-one-hot gradient as SFT, times the weight instead of 1/tokens. Everything below
/// the head is SFT's backward unchanged.
package final class PreferenceStep {
    package let model: Transformer
    package let state: ForwardState
    package let grads: BackwardState
    private var scales: [Float]

    /// `state`: a training state with the whole head (no headChunkRows) and scoredOnly.
    package init(model: Transformer, state: ForwardState) throws {
        guard !state.chunkedHead, state.keepsAllLayers else {
            throw MoETuneError.invalid("internal: preference training needs a training ForwardState with the whole head")
        }
        self.model = model
        self.state = state
        grads = BackwardState(for: state, config: model.config)
        scales = [Float](repeating: 0, count: state.batchCapacity * state.seqCapacity)
    }

    /// Summed log-probabilities of the completion tokens of each row [2P] of the last forward
    /// pass and their counts (the head's losses are -log p of the scored positions).
    package func sequenceLogps(_ batch: PreferenceBatch) -> (sums: [Double], counts: [Int]) {
        let t = batch.tokens.seq
        var sums = [Double](repeating: 0, count: 2 * batch.pairs), counts = [Int](repeating: 0, count: 2 * batch.pairs)
        for m in 0..<state.headRows {
            let pos = state.headRowPosition(m)
            guard batch.completion[pos] else { continue }
            sums[pos / t] -= Double(state.losses[m])
            counts[pos / t] += 1
        }
        return (sums, counts)
    }

    /// The reference's summed completion log-probabilities per pair (chosen, rejected): the
    /// model with `adapters` (nil: the base, adapter off), no router noise, no backward.
    package func reference(_ batch: PreferenceBatch, adapters: AdapterSet?) throws -> [(chosen: Double, rejected: Double)] {
        let training = model.moe.training
        model.moe.training = false
        defer { model.moe.training = training }
        let dropout = adapters?.dropout?.active
        adapters?.dropout?.active = false
        defer { if let dropout { adapters?.dropout?.active = dropout } }
        _ = try model.forward(batch.tokens, state: state, adapters: adapters)
        let (sums, _) = sequenceLogps(batch)
        return (0..<batch.pairs).map { (sums[$0], sums[batch.pairs + $0]) }
    }

    /// Policy forward and the pairs' losses (no backward: evaluation), with ORPO's NLL sums.
    package func score(_ batch: PreferenceBatch, adapters: AdapterSet, objective: PreferenceObjective,
                       reference: [(chosen: Double, rejected: Double)]?) throws -> PreferenceMicroResult {
        _ = try model.forward(batch.tokens, state: state, adapters: adapters)
        let (sums, counts) = sequenceLogps(batch)
        var result = PreferenceMicroResult()
        for i in 0..<batch.pairs {
            var p = PairLogps(chosen: sums[i], rejected: sums[batch.pairs + i],
                              chosenTokens: counts[i], rejectedTokens: counts[batch.pairs + i])
            if let reference { (p.refChosen, p.refRejected) = reference[i] }
            result.pairs.append(objective.loss(p))
        }
        if objective.method == .orpo {
            for m in 0..<state.headRows where state.headRowPosition(m) / batch.tokens.seq < batch.pairs {
                result.nllSum += Double(state.losses[m])
                result.nllTokens += 1
            }
        }
        return result
    }

    /// score, then the backward of J (above) into the adapters' gradients (accumulated).
    /// `reference`: the pairs' reference log-probs (DPO). `pairScale` = 1/P_step, `nllScale` =
    /// 1/N_nll (ORPO), `auxScale` as SFT's (MoE auxiliary losses).
    package func run(_ batch: PreferenceBatch, adapters: AdapterSet, objective: PreferenceObjective,
                     reference: [(chosen: Double, rejected: Double)]?, pairScale: Double, nllScale: Double,
                     auxScale: Float) throws -> PreferenceMicroResult {
        let result = try score(batch, adapters: adapters, objective: objective, reference: reference)
        // Per head row m at position pos (row pos / T): d J / d CE, as derived above.
        let t = batch.tokens.seq, orpo = objective.method == .orpo
        for m in 0..<state.headRows {
            let pos = state.headRowPosition(m), row = pos / t
            let chosen = row < batch.pairs, pair = result.pairs[chosen ? row : row - batch.pairs]
            var w = 0.0
            if batch.completion[pos] { w -= pairScale * (chosen ? pair.dChosen : pair.dRejected) }
            if orpo && chosen { w += nllScale }
            scales[m] = Float(w)
        }
        scales.withUnsafeBufferPointer { p in
            state.headRowScales = p.baseAddress
            model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1, auxScale: auxScale)
            state.headRowScales = nil
        }
        return result
    }

    /// This rank's share of one optimizer step: the gradients (zeroed first) of `mine`, micro-
    /// batches of the run by index (dropout masks and router noise follow the index), with J's
    /// scales from the whole step (`pairs`, `nllTokens`, `microBatches` over every rank). The
    /// reference: `cached` (precompute_ref, by pair index), else a forward with `refAdapters`.
    /// Returns the micro-batches' results and their summed MoE load-balancing loss / microBatches.
    package func accumulate(_ mine: [(m: Int, indices: [Int], batch: PreferenceBatch)], pairs: Int, nllTokens: Int, microBatches: Int,
                            adapters: AdapterSet, reference refAdapters: AdapterSet?, cached: [(chosen: Double, rejected: Double)]?,
                            objective: PreferenceObjective) throws -> ([PreferenceMicroResult], Double) {
        adapters.store.zeroGrads()
        adapters.dropout?.active = true
        model.moe.training = true
        var results: [PreferenceMicroResult] = []
        var aux = 0.0
        for mb in mine {
            adapters.dropout?.step = mb.m
            model.moe.step = mb.m
            var ref: [(chosen: Double, rejected: Double)]?
            if objective.needsReference {
                ref = try cached.map { cache in mb.indices.map { cache[$0] } } ?? reference(mb.batch, adapters: refAdapters)
            }
            results.append(try run(mb.batch, adapters: adapters, objective: objective, reference: ref,
                                   pairScale: 1 / Double(pairs), nllScale: 1 / Double(max(nllTokens, 1)),
                                   auxScale: 1 / Float(microBatches)))
            aux += state.auxLoss / Double(microBatches)
        }
        return (results, aux)
    }

    /// Loss and metrics over `examples` in file order, `batchSize` pairs at a time, forward only
    /// (adapter dropout and router noise off); the reference in the same pass.
    package func evaluate(_ examples: [PreferenceExample], batchSize: Int, adapters: AdapterSet, reference refAdapters: AdapterSet?,
                          objective: PreferenceObjective) throws -> (loss: Double, metrics: [String: Double]) {
        let (dropout, training) = (adapters.dropout?.active, model.moe.training)
        adapters.dropout?.active = false
        model.moe.training = false
        defer {
            if let dropout { adapters.dropout?.active = dropout }
            model.moe.training = training
        }
        var results: [PreferenceMicroResult] = []
        for start in stride(from: 0, to: examples.count, by: batchSize) {
            let batch = PreferenceBatch(Array(examples[start..<min(start + batchSize, examples.count)]),
                                        chosenPromptTargets: objective.method == .orpo)
            let ref = objective.needsReference ? try reference(batch, adapters: refAdapters) : nil
            results.append(try score(batch, adapters: adapters, objective: objective, reference: ref))
        }
        return objective.summary(results)
    }
}

/// The method and its settings, from the config.
package struct PreferenceObjective: Sendable {
    package var method: TrainConfig.TrainMethod
    package var dpo: TrainConfig.DPOSection
    package var orpoBeta: Double

    package init(method: TrainConfig.TrainMethod, dpo: TrainConfig.DPOSection = .init(), orpoBeta: Double = 0.1) {
        self.method = method; self.dpo = dpo; self.orpoBeta = orpoBeta
    }

    package var needsReference: Bool { method == .dpo }

    package func loss(_ p: PairLogps) -> PairLoss {
        method == .orpo ? PreferenceLoss.orpo(p, beta: orpoBeta)
            : PreferenceLoss.dpo(p, loss: dpo.loss, beta: dpo.beta, labelSmoothing: dpo.labelSmoothing)
    }

    /// Chosen-sequence predictions ORPO's NLL averages over (prompt included), over `batches`.
    package static func nllTokens(_ batches: [PreferenceBatch]) -> Int {
        batches.reduce(0) { n, b in
            n + (0..<(b.pairs * b.tokens.seq)).reduce(0) { $0 + (b.tokens.targets[$1] >= 0 ? 1 : 0) }
        }
    }

    /// TRL's metric names of the method, in PairLoss.metrics' order.
    package var metricNames: [String] {
        let dpo = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
        return method == .orpo ? dpo + ["log_odds_ratio", "log_odds_chosen"] : dpo
    }

    /// The sums a step's loss and metrics are made of, one vector to add up over ranks:
    /// [pairs, Σ loss, Σ nll, nll tokens, Σ each metric in metricNames' order].
    package func totals(_ results: [PreferenceMicroResult]) -> [Double] {
        var t = [Double](repeating: 0, count: 4 + metricNames.count)
        for r in results {
            for p in r.pairs {
                t[0] += 1
                t[1] += p.loss
                for (k, (_, v)) in p.metrics.enumerated() { t[4 + k] += v }
            }
            t[2] += r.nllSum
            t[3] += Double(r.nllTokens)
        }
        return t
    }

    /// The step's loss and metrics from its totals: means over the step's pairs (TRL's names),
    /// ORPO's nll_loss the mean over the chosen-sequence tokens.
    package func summary(totals t: [Double]) -> (loss: Double, metrics: [String: Double]) {
        let n = max(t[0], 1)
        var metrics: [String: Double] = [:]
        for (k, name) in metricNames.enumerated() { metrics[name] = t[4 + k] / n }
        var loss = t[1] / n
        if method == .orpo {
            let nll = t[2] / max(t[3], 1)
            metrics["nll_loss"] = nll
            loss += nll
        }
        return (loss, metrics)
    }

    package func summary(_ results: [PreferenceMicroResult]) -> (loss: Double, metrics: [String: Double]) {
        summary(totals: totals(results))
    }
}
