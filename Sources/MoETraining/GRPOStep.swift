import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// Forward, loss and backward of GRPO on one micro-batch of completions (GRPOBatch: a row
/// each, prompt + completion).
///
/// The backward. The head computes, at each scored position (a completion token t of row i),
/// CE_it = -logp_it with the logits divided by the temperature (ForwardState.headTemperature,
/// as TRL's fused head). The micro-batch's loss L depends on the model only through those
/// logp_it (GRPOLoss gives dL/dlogp_it), and the step's objective is J = (1/grad_accum) Σ L, so
///   dJ/dCE_it = -(1/grad_accum) dL/dlogp_it,
/// a weight per token. It goes into the cross-entropy backward as the head row's scale
/// (ForwardState.headRowScales, the hook DPO's per-row scales use): d logits = w (softmax - onehot),
/// then / T for the temperature (Head.swift). Everything below the head is SFT's backward.
package final class GRPOStep {
    package let model: Transformer
    package let state: ForwardState
    package let grads: BackwardState
    private var scales: [Float]

    /// `state`: a training state with the whole head (no headChunkRows) and scoredOnly.
    package init(model: Transformer, state: ForwardState) throws {
        guard !state.chunkedHead, state.keepsAllLayers else {
            throw MoETuneError.invalid("internal: GRPO needs a training ForwardState with the whole head")
        }
        self.model = model
        self.state = state
        grads = BackwardState(for: state, config: model.config)
        scales = [Float](repeating: 0, count: state.batchCapacity * state.seqCapacity)
    }

    /// Each row's completion log-probabilities of the last forward pass ([rows][completion length]),
    /// and for each head row its (row, token) place.
    func tokenLogps(_ batch: GRPOBatch) -> (logps: [[Double]], place: [(row: Int, t: Int)]) {
        let seq = batch.tokens.seq
        var logps = batch.completions.map { [Double](repeating: 0, count: $0.count) }
        var place: [(row: Int, t: Int)] = []
        place.reserveCapacity(state.headRows)
        for m in 0..<state.headRows {
            let pos = state.headRowPosition(m), row = pos / seq
            // The prediction at position p is of token p + 1, the completion's (p + 1 - prompt length)th.
            let t = pos % seq + 1 - batch.promptLengths[row]
            logps[row][t] = -Double(state.losses[m])
            place.append((row, t))
        }
        return (logps, place)
    }

    /// Per-token log-probabilities with `adapters` (nil: the base, adapter off) at `temperature`,
    /// no dropout, no router noise, no backward: the reference's, or the sampling policy's (old).
    package func logps(_ batch: GRPOBatch, adapters: AdapterSet?, temperature: Double) throws -> [[Double]] {
        let training = model.moe.training
        model.moe.training = false
        defer { model.moe.training = training }
        let dropout = adapters?.dropout?.active
        adapters?.dropout?.active = false
        defer { if let dropout { adapters?.dropout?.active = dropout } }
        state.headTemperature = Float(temperature)
        defer { state.headTemperature = 1 }
        _ = try model.forward(batch.tokens, state: state, adapters: adapters)
        return tokenLogps(batch).logps
    }

    /// The policy forward, the micro-batch's loss (GRPOLoss) and its backward into the adapters'
    /// gradients (accumulated), each token's dJ/dCE = -microScale dL/dlogp (microScale = 1/grad_accum).
    /// `old`: the sampling policy's log-probs (nil: this forward's, ratios 1); `ref`: the reference's (beta > 0).
    package func run(_ batch: GRPOBatch, adapters: AdapterSet, advantages: [Double], old: [[Double]]?, ref: [[Double]]?,
                     settings: GRPOLossSettings, temperature: Double, microScale: Double, auxScale: Float) throws -> GRPOMicroLoss {
        state.headTemperature = Float(temperature)
        defer { state.headTemperature = 1 }
        _ = try model.forward(batch.tokens, state: state, adapters: adapters)
        let (logps, place) = tokenLogps(batch)
        let seqs = (0..<batch.rows).map { GRPOSequence(logps: logps[$0], old: old?[$0], ref: ref?[$0], advantage: advantages[$0]) }
        let result = GRPOLoss.microBatch(seqs, settings)
        for (m, p) in place.enumerated() { scales[m] = Float(-microScale * result.dLogps[p.row][p.t]) }
        scales.withUnsafeBufferPointer { p in
            state.headRowScales = p.baseAddress
            model.backward(state: state, adapters: adapters, grads: grads, lossScale: 1, auxScale: auxScale)
            state.headRowScales = nil
        }
        return result
    }
}
