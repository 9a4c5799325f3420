import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// Learning rate at optimizer step s (counting from 1) of `total` steps:
/// linear warm-up to the peak over `warmup` steps (lr * s / warmup), then either constant
/// or half-cycle cosine from the peak down to minLR at the last step:
///   lr(s) = minLR + (peak - minLR) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2.
public struct LearningRateSchedule: Equatable, Sendable {
    public enum Kind: String, Sendable { case cosine, constant }
    public var kind: Kind
    public var peak: Double
    public var minLR: Double
    public var warmup: Int
    public var total: Int

    public init(kind: Kind, peak: Double, minLR: Double = 0, warmup: Int = 0, total: Int) {
        self.kind = kind; self.peak = peak; self.minLR = minLR; self.warmup = warmup; self.total = total
    }

    public func lr(step s: Int) -> Double {
        if warmup > 0, s <= warmup { return peak * Double(s) / Double(warmup) }
        switch kind {
        case .constant: return peak
        case .cosine:
            guard total > warmup else { return peak }
            let progress = min(1, Double(s - warmup) / Double(total - warmup))
            return minLR + (peak - minLR) * 0.5 * (1 + Foundation.cos(Double.pi * progress))
        }
    }
}
