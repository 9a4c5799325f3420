import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// A compact text table of routing statistics, one row per layer:
///   layer  load per expert (%)            max/mean  CV     entropy  dropped
/// Above `maxColumns` experts (a 128-expert model would print 128 columns a layer), one
/// summary line per layer instead (`expertSummaryTable`); report.html keeps the full heatmap.
public func expertTable(_ s: RoutingStatistics, maxColumns: Int = 16) -> String {
    if s.experts > maxColumns { return expertSummaryTable(s) }
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

/// One line per layer for models with many experts:
///   layer  max/mean  CV  entropy  dropped  idle  top 3 (expert: load %)
/// `idle`: experts that received no token of the layer.
public func expertSummaryTable(_ s: RoutingStatistics) -> String {
    var lines = ["layer  max/mean     CV  entropy  dropped   idle  top 3 (expert: load %)"]
    for l in 0..<s.layers {
        guard s.tokens[l] > 0 else {
            lines.append(String(format: "%5d ", l) + "  (no routed tokens: a dense layer, or no data)")
            continue
        }
        let f = s.fractions(layer: l)
        let b = s.balance(layer: l)
        let idle = f.filter { $0 == 0 }.count
        let top = f.indices.sorted { f[$0] != f[$1] ? f[$0] > f[$1] : $0 < $1 }.prefix(3)
            .map { String(format: "%d: %.1f", $0, 100 * f[$0]) }.joined(separator: ", ")
        lines.append(String(format: "%5d  %8.2f %6.3f %8.3f %7.1f%% %6d  ", l, b.maxOverMean, b.cv, s.entropy(layer: l),
                            100 * s.droppedFraction(layer: l), idle) + top)
    }
    var footer = String(format: "%d experts a layer; mean CV %.3f", s.experts, s.meanCV)
    if s.passes > 0 {
        footer += String(format: "; aux loss %.4f; z-loss %.4f", s.auxLossSum / Double(s.passes), s.zLossSum / Double(s.passes))
    }
    lines.append(footer)
    return lines.joined(separator: "\n")
}
