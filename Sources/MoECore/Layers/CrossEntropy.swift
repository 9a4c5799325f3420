import CKernels
import Foundation
import MoEFormats
import MoEText

/// Next-token cross-entropy over N rows of logits [N, V].
/// targets [N]: the id to predict at each row, or -1 where no prediction counts.
/// losses [N] receives each row's loss (0 where ignored). Returns (sum of losses, count).
/// The sum is accumulated in Double so means over many tokens stay exact to fp32.
public func crossEntropyForward(losses: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>,
                                targets: UnsafePointer<Int32>, rows n: Int, vocab v: Int) -> (sum: Double, count: Int) {
    parallelChunks(n, minChunk: 8) { range in
        for i in range {
            let tgt = Int(targets[i])
            guard tgt >= 0 else { losses[i] = 0; continue }
            let row = logits + i * v
            let m = mt_max(row, v)
            let sum = mt_sum_exp_shift(row, v, m)
            losses[i] = m + Foundation.log(sum) - row[tgt]
        }
    }
    var total = 0.0
    var count = 0
    for i in 0..<n where targets[i] >= 0 {
        total += Double(losses[i])
        count += 1
    }
    return (total, count)
}

/// Backward of the mean cross-entropy: dlogits[n, :] = scale * (softmax(logits[n, :]) - onehot(target)),
/// zero on ignored rows. scale is 1 / (counted tokens) for a mean loss (times any
/// gradient-accumulation factor). Overwrites dlogits [N, V], which may be the logits
/// themselves (computed in place).
/// With `rowScales` [N], row i's scale is scale * rowScales[i]: the gradient of
/// sum_i scale * rowScales[i] * loss_i (a weighted loss, e.g. preference training's
/// d objective / d token log-prob; Training/PreferenceStep.swift).
public func crossEntropyBackward(dlogits: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>,
                                 targets: UnsafePointer<Int32>, rows n: Int, vocab v: Int, scale: Float,
                                 rowScales: UnsafePointer<Float>? = nil) {
    parallelChunks(n, minChunk: 8) { range in
        for i in range {
            let d = dlogits + i * v
            let tgt = Int(targets[i])
            guard tgt >= 0 else { d.update(repeating: 0, count: v); continue }
            let row = logits + i * v
            let m = mt_max(row, v)
            if UnsafePointer(d) != row { d.update(from: row, count: v) }
            let rs = rowScales.map { scale * $0[i] } ?? scale
            let k = rs / mt_exp_shift_inplace(d, v, m)
            for j in 0..<v { d[j] *= k }
            d[tgt] -= rs
        }
    }
}
