import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

extension RunReport {
    /// The ESFT selection of out_dir/experts.json as an experts x layers map for report.html:
    /// each cell's blue deepens with the expert's score relative to the layer's best, and a
    /// selected expert is outlined in black. nil without (or with an unreadable) experts.json.
    package static func expertSelectionSection(outDir: String) -> String? {
        let path = (outDir as NSString).appendingPathComponent("experts.json")
        guard let data = FileManager.default.contents(atPath: path),
              let sel = try? ExpertSelection.read(json: data, path: path),
              let e = sel.layers.first?.scores.count, e > 0 else { return nil }
        let cell = max(4.0, min(28.0, 700.0 / Double(e)))
        let (l, t) = (56.0, 10.0)
        let w = l + cell * Double(e) + 90, h = t + cell * Double(sel.layers.count) + 36
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(w))' height='\(Int(h))'>"
        for (row, layer) in sel.layers.enumerated() {
            let y = t + cell * Double(row)
            let best = layer.scores.max() ?? 0
            svg += "<text x='\(l - 6)' y='\(y + cell / 2 + 4)' text-anchor='end'>layer \(layer.layer)</text>"
            for (col, v) in layer.scores.enumerated() {
                let d = best > 0 ? v / best : 0
                let color = String(format: "rgb(%d,%d,255)", Int(255 * (1 - 0.85 * d)), Int(255 * (1 - 0.6 * d)))
                let chosen = layer.selected.contains(col)
                svg += String(format: "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%@' stroke='%@'><title>layer %d expert %d: %.4f%@</title></rect>",
                              l + cell * Double(col), y, cell, cell, color, chosen ? "#000" : "#fff", layer.layer, col, v, chosen ? " (selected)" : "")
            }
            svg += String(format: "<text x='%.1f' y='%.1f'>%d selected</text>", l + cell * Double(e) + 6, y + cell / 2 + 4, layer.selected.count)
        }
        svg += "<text x='\(l + cell * Double(e) / 2)' y='\(t + cell * Double(sel.layers.count) + 16)' text-anchor='middle'>expert (\(sel.select.rawValue); outlined: selected)</text>"
        let chosen = sel.layers.reduce(0) { $0 + $1.selected.count }
        return "<h2>Experts trained (ESFT: \(escape(sel.select.rawValue)), coverage \(sel.coverage), \(chosen) of \(sel.layers.count * e) over \(sel.tokens) tokens)</h2>"
            + svg + "</svg>"
    }
}
