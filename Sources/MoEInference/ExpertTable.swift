import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// A compact text table of routing statistics, one row per layer:
///   layer  load per expert (%)            max/mean  CV     entropy  dropped
public func expertTable(_ s: RoutingStatistics) -> String {
    var lines: [String] = []
    let loads = (0..<s.experts).map { String(format: "%5d", $0) }.joined()
    lines.append("layer " + loads + "   max/mean     CV  entropy  dropped")
    for l in 0..<s.layers {
        if s.tokens[l] == 0 {
            lines.append(String(format: "%5d ", l) + "  (no routed tokens: a dense layer, or no data)")
            continue
        }
        let f = s.fractions(layer: l).map { String(format: "%5.1f", 100 * $0) }.joined()
        let b = s.balance(layer: l)
        lines.append(String(format: "%5d ", l) + f
            + String(format: "   %8.2f %6.3f %8.3f %7.1f%%", b.maxOverMean, b.cv, s.entropy(layer: l), 100 * s.droppedFraction(layer: l)))
    }
    var footer = String(format: "mean CV %.3f", s.meanCV)
    if s.passes > 0 {
        footer += String(format: "; aux loss %.4f; z-loss %.4f", s.auxLossSum / Double(s.passes), s.zLossSum / Double(s.passes))
    }
    lines.append(footer)
    return lines.joined(separator: "\n")
}
