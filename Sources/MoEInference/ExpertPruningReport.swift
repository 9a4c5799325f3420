import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

extension PrunePlan {
    /// `{"method", "seed", "experts", "keep", "tokens", "layers": [{"layer", "saliency": [one
    /// per expert], "kept": [ids]}]}`.
    public var jsonObject: [String: Any] {
        ["method": method.rawValue, "seed": NSNumber(value: seed), "experts": experts, "keep": keep, "tokens": tokens,
         "layers": layers.map { ["layer": $0.layer, "saliency": $0.saliency, "kept": $0.kept] as [String: Any] }]
    }

    /// A readable table: up to 16 experts one column each (a kept expert marked *), more as
    /// one line per layer (the 5 most and least salient, and the share of the layer's
    /// saliency the kept experts hold).
    public func table() -> String {
        var lines = ["\(method.rawValue) saliency per expert" + (method == .random ? ", seed \(seed)" : ", \(tokens) tokens")
                     + "; keeping \(keep) of \(experts) per layer"]
        if experts <= 16 {
            lines.append("layer " + (0..<experts).map { String(format: "%9d", $0) }.joined() + "   dropped")
            for l in layers {
                let cells = l.saliency.enumerated().map { String(format: " %8.4g", $1) + (l.kept.contains($0) ? "*" : " ") }
                let dropped = (0..<experts).filter { !l.kept.contains($0) }
                lines.append(String(format: "%5d ", l.layer) + cells.joined() + "  " + dropped.map(String.init).joined(separator: ","))
            }
        } else {
            lines.append("layer  kept share  most salient (expert saliency)  |  least salient")
            for l in layers {
                let order = l.saliency.indices.sorted { l.saliency[$0] != l.saliency[$1] ? l.saliency[$0] > l.saliency[$1] : $0 < $1 }
                let total = l.saliency.reduce(0, +)
                let share = total > 0 ? 100 * l.kept.reduce(0.0) { $0 + l.saliency[$1] } / total : 0
                let text = { (ids: ArraySlice<Int>) in ids.map { String(format: "%d %.4g", $0, l.saliency[$0]) }.joined(separator: ", ") }
                lines.append(String(format: "%5d  %9.1f%%  ", l.layer, share) + text(order.prefix(5)) + "  |  " + text(order.suffix(5)))
            }
        }
        lines.append("kept \(keep * layers.count) of \(experts * layers.count) experts over \(layers.count) routed layers")
        return lines.joined(separator: "\n")
    }
}
