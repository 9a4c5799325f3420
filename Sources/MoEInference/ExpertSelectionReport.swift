import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

extension ExpertSelection {
    /// `{"select", "coverage", "tokens", "layers": [{"layer", "scores": [one per expert], "selected": [ids]}]}`.
    public var jsonObject: [String: Any] {
        ["select": select.rawValue, "coverage": coverage, "tokens": tokens,
         "layers": layers.map { ["layer": $0.layer, "scores": $0.scores, "selected": $0.selected] as [String: Any] }]
    }

    /// The JSON object as one line (keys sorted), as `moe-tune experts --json` prints it and
    /// experts.json holds it.
    public func jsonData() throws -> Data {
        let obj = jsonObject
        guard JSONSerialization.isValidJSONObject(obj) else {
            throw MoETuneError.invalid("the expert scores hold a value JSON cannot encode")
        }
        return try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
    }

    /// Reads what `jsonData` wrote (experts.json).
    public static func read(json data: Data, path: String) throws -> ExpertSelection {
        func fail(_ m: String) -> MoETuneError { MoETuneError.file(path: path, message: m) }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw fail("not a JSON object") }
        guard let s = obj["select"] as? String, let kind = ExpertScoreKind(rawValue: s) else { throw fail("\"select\" must be gate_score or token_share") }
        guard let p = (obj["coverage"] as? NSNumber)?.doubleValue, let n = (obj["tokens"] as? NSNumber)?.intValue,
              let ls = obj["layers"] as? [[String: Any]] else { throw fail("needs coverage, tokens and layers") }
        let layers = try ls.map { l -> ExpertLayerSelection in
            guard let i = (l["layer"] as? NSNumber)?.intValue, let sc = l["scores"] as? [NSNumber],
                  let sel = l["selected"] as? [NSNumber] else { throw fail("a layer needs layer, scores and selected") }
            return ExpertLayerSelection(layer: i, scores: sc.map(\.doubleValue), selected: sel.map(\.intValue))
        }
        return ExpertSelection(select: kind, coverage: p, tokens: n, layers: layers)
    }

    /// A readable table: up to 16 experts one column each (a selected expert's score marked
    /// with *), more as one summary line per layer (how many selected, the top 5, how many
    /// experts scored 0).
    public func table() -> String {
        var lines = ["\(select.rawValue) per expert, coverage \(coverage), \(tokens) tokens"]
        let experts = layers.first?.scores.count ?? 0
        if experts <= 16 {
            lines.append("layer " + (0..<experts).map { String(format: "%7d", $0) }.joined() + "   selected")
            for l in layers {
                let cells = l.scores.enumerated().map { String(format: " %6.4f", $1) + (l.selected.contains($0) ? "*" : " ") }
                lines.append(String(format: "%5d ", l.layer) + cells.joined() + "  \(l.selected.count) of \(experts)")
            }
        } else {
            lines.append("layer  selected    covers  top 5 (expert score)                                 zero")
            for l in layers {
                let total = l.scores.reduce(0, +)
                let covered = l.selected.reduce(0.0) { $0 + l.scores[$1] }
                let top = l.scores.indices.sorted { l.scores[$0] != l.scores[$1] ? l.scores[$0] > l.scores[$1] : $0 < $1 }.prefix(5)
                let topText = top.map { String(format: "%d %.4f", $0, l.scores[$0]) }.joined(separator: ", ")
                let pad = topText.count < 52 ? topText + String(repeating: " ", count: 52 - topText.count) : topText
                lines.append(String(format: "%5d  %4d of %-4d %6.1f%%  ", l.layer, l.selected.count, experts, total > 0 ? 100 * covered / total : 0)
                             + pad + " " + String(l.scores.filter { $0 == 0 }.count))
            }
        }
        let chosen = layers.reduce(0) { $0 + $1.selected.count }
        lines.append("selected \(chosen) of \(layers.count * experts) experts over \(layers.count) routed layers")
        return lines.joined(separator: "\n")
    }
}
