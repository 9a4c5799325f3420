import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// out_dir/report.html: one self-contained page (inline SVG, no scripts, no network) with
/// the loss curves, learning rate, tokens/s and an experts x layers load heatmap at the
/// first and the last evaluation, built from metrics.jsonl.
public enum RunReport {
    public static func write(outDir: String, title: String) throws {
        let metrics = try MetricsLog.read(path: outDir + "/metrics.jsonl")
        var html = render(metrics: metrics, title: title, config: (try? String(contentsOfFile: outDir + "/config.yaml", encoding: .utf8)) ?? "")
        if let experts = expertSelectionSection(outDir: outDir) {
            html = html.replacingOccurrences(of: "<h2>Configuration</h2>", with: experts + "\n<h2>Configuration</h2>")
        }
        try AtomicFile.write(Data(html.utf8), to: outDir + "/report.html")
    }

    package static func number(_ v: Any?) -> Double? { (v as? NSNumber)?.doubleValue }

    public static func render(metrics: [[String: Any]], title: String, config: String) -> String {
        let steps = metrics.filter { $0["type"] as? String == "step" }
        let evals = metrics.filter { $0["type"] as? String == "eval" && $0["split"] as? String == "valid" }
        let tests = metrics.filter { $0["type"] as? String == "eval" && $0["split"] as? String == "test" }
        func series(_ rows: [[String: Any]], _ key: String) -> [(Double, Double)] {
            rows.compactMap { r in number(r["step"]).flatMap { s in number(r[key]).map { (s, $0) } } }
        }
        var body = ""
        let trainLoss = series(steps, "loss"), validLoss = series(evals, "loss")
        // The per-step loss is noisy with small batches: draw an exponential moving average over it.
        var ema: [(Double, Double)] = []
        for p in trainLoss { ema.append((p.0, ema.last.map { 0.9 * $0.1 + 0.1 * p.1 } ?? p.1)) }
        body += "<h2>Loss</h2>" + lineChart([("train", trainLoss, "#a9bfe8"), ("train (EMA 0.9)", ema, "#2a5cb8"),
                                             ("valid", validLoss, "#ee854a")], yLabel: "cross-entropy")
        body += "<div class=row><div><h2>Learning rate</h2>" + lineChart([("lr", series(steps, "lr"), "#6acc64")], yLabel: "lr", small: true)
        body += "</div><div><h2>Throughput</h2>" + lineChart([("tokens/s", series(steps, "tokens_per_s"), "#956cb4")], yLabel: "trained tokens/s", small: true) + "</div></div>"
        // DPO / ORPO runs: TRL's rewards and reward accuracy (absent from SFT runs).
        if steps.contains(where: { $0["rewards/margins"] != nil }) {
            body += "<div class=row><div><h2>Rewards (per step)</h2>" + lineChart([("chosen", series(steps, "rewards/chosen"), "#2a5cb8"),
                ("rejected", series(steps, "rewards/rejected"), "#d65f5f"), ("margin", series(steps, "rewards/margins"), "#6acc64")],
                yLabel: "reward", small: true)
            body += "</div><div><h2>Reward accuracy</h2>" + lineChart([("train", series(steps, "rewards/accuracies"), "#a9bfe8"),
                ("valid", series(evals, "rewards/accuracies"), "#ee854a")], yLabel: "chosen > rejected", small: true) + "</div></div>"
        }
        if steps.contains(where: { $0["reward_std"] != nil }) { body += grpoCharts(steps: steps, evals: evals, series: series) }
        let moeEvals = evals.filter { $0["experts"] != nil }
        if let first = moeEvals.first, let last = moeEvals.last {
            body += "<h2>Expert load (share of each layer's assignments on the validation set)</h2><div class=row>"
            body += "<div>" + heatmap(first, label: "first evaluation, step \(Int(number(first["step"]) ?? 0))") + "</div>"
            body += "<div>" + heatmap(last, label: "last evaluation, step \(Int(number(last["step"]) ?? 0))") + "</div></div>"
            let aux = series(steps, "aux_loss")
            if !aux.isEmpty {
                body += "<h2>Load-balancing loss (per step)</h2>" + lineChart([("aux", aux, "#d65f5f")], yLabel: "aux loss", small: true)
            }
        }
        var facts: [(String, String)] = []
        if let s = trainLoss.first, let e = trainLoss.last { facts.append(("train loss", String(format: "%.4f → %.4f", s.1, e.1))) }
        if let s = validLoss.first, let e = validLoss.last { facts.append(("valid loss", String(format: "%.4f → %.4f", s.1, e.1))) }
        if let t = tests.last.flatMap({ number($0["loss"]) }) { facts.append(("test loss", String(format: "%.4f", t))) }
        if let e = steps.last.flatMap({ number($0["elapsed_s"]) }) { facts.append(("training time", String(format: "%.1f s", e))) }
        let tokens = steps.compactMap { number($0["tokens"]) }.reduce(0, +)
        if let e = steps.last.flatMap({ number($0["elapsed_s"]) }), e > 0 {
            facts.append(("trained tokens", String(format: "%.0f (%.0f tokens/s)", tokens, tokens / e)))
        }
        let computed = steps.compactMap { number($0["tokens_computed"]) }.reduce(0, +)
        let real = steps.compactMap { number($0["tokens_real"]) }.reduce(0, +)
        if computed > 0 {
            // Over the logged steps: padding = computed tokens that are no example's;
            // predictions = computed tokens that carry a target counted in the loss.
            facts.append(("padding share", String(format: "%.1f%% of %.0f computed tokens (%.1f%% carry a prediction)",
                                                  100 * (computed - real) / computed, computed, 100 * tokens / computed)))
        }
        facts.append(("steps", "\(steps.count)"))
        let table = "<table>" + facts.map { "<tr><th>\(escape($0.0))</th><td>\(escape($0.1))</td></tr>" }.joined() + "</table>"
        return """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>\(escape(title))</title>
        <style>
        body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
        h1 { font-size: 22px; } h2 { font-size: 16px; margin: 22px 0 6px; }
        .row { display: flex; gap: 24px; flex-wrap: wrap; }
        table { border-collapse: collapse; } th { text-align: left; padding: 2px 14px 2px 0; color: #555; font-weight: 600; }
        td { padding: 2px 0; font-variant-numeric: tabular-nums; }
        pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow-x: auto; }
        svg text { font-size: 11px; fill: #333; }
        </style></head><body>
        <h1>\(escape(title))</h1>
        \(table)
        \(body)
        <h2>Configuration</h2><pre>\(escape(config))</pre>
        </body></html>
        """
    }

    package static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    package static func tick(_ v: Double) -> String {
        let a = abs(v)
        if a == 0 { return "0" }
        if a >= 100 { return String(format: "%.0f", v) }
        if a >= 1 { return String(format: "%.2f", v) }
        return String(format: "%.1e", v)
    }

    /// A line chart of one or more series sharing axes.
    package static func lineChart(_ lines: [(String, [(Double, Double)], String)], yLabel: String, small: Bool = false) -> String {
        let w = small ? 520.0 : 1040.0, h = small ? 200.0 : 300.0
        let (l, r, t, b) = (60.0, 20.0, 14.0, 34.0)
        let pts = lines.flatMap(\.1)
        guard !pts.isEmpty else { return "<p>(no data)</p>" }
        var (x0, x1) = (pts.map(\.0).min()!, pts.map(\.0).max()!)
        var (y0, y1) = (pts.map(\.1).min()!, pts.map(\.1).max()!)
        if x1 == x0 { x1 = x0 + 1 }
        if y1 == y0 { y0 -= 0.5 * abs(y0) + 1e-9; y1 += 0.5 * abs(y1) + 1e-9 }
        let pad = (y1 - y0) * 0.05
        // Losses, rates and throughput are never negative: keep the axis at or above 0.
        y0 = pts.allSatisfy({ $0.1 >= 0 }) ? max(0, y0 - pad) : y0 - pad
        y1 += pad
        func px(_ x: Double) -> Double { l + (x - x0) / (x1 - x0) * (w - l - r) }
        func py(_ y: Double) -> Double { t + (1 - (y - y0) / (y1 - y0)) * (h - t - b) }
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(w))' height='\(Int(h))' viewBox='0 0 \(Int(w)) \(Int(h))'>"
        svg += "<rect x='\(l)' y='\(t)' width='\(w - l - r)' height='\(h - t - b)' fill='#fafafa' stroke='#ccc'/>"
        for i in 0...4 {
            let yv = y0 + (y1 - y0) * Double(i) / 4, yy = py(yv)
            svg += "<line x1='\(l)' x2='\(w - r)' y1='\(yy)' y2='\(yy)' stroke='#e4e4e4'/>"
            svg += "<text x='\(l - 6)' y='\(yy + 4)' text-anchor='end'>\(tick(yv))</text>"
            let xv = x0 + (x1 - x0) * Double(i) / 4
            svg += "<text x='\(px(xv))' y='\(h - b + 16)' text-anchor='middle'>\(Int(xv.rounded()))</text>"
        }
        svg += "<text x='\((l + w - r) / 2)' y='\(h - 4)' text-anchor='middle'>step</text>"
        svg += "<text x='12' y='\((t + h - b) / 2)' text-anchor='middle' transform='rotate(-90 12 \((t + h - b) / 2))'>\(escape(yLabel))</text>"
        for (i, (name, data, color)) in lines.enumerated() where !data.isEmpty {
            let path = data.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            svg += "<polyline fill='none' stroke='\(color)' stroke-width='1.6' points='\(path)'/>"
            if data.count <= 40 {
                for p in data { svg += String(format: "<circle cx='%.1f' cy='%.1f' r='2.8' fill='%@'/>", px(p.0), py(p.1), color) }
            }
            svg += "<rect x='\(w - r - 110)' y='\(t + 8 + Double(i) * 16)' width='10' height='10' fill='\(color)'/>"
            svg += "<text x='\(w - r - 95)' y='\(t + 17 + Double(i) * 16)'>\(escape(name))</text>"
        }
        return svg + "</svg>"
    }

    /// Experts (columns) x layers (rows), colour = share of the layer's assignments.
    package static func heatmap(_ eval: [String: Any], label: String) -> String {
        guard let experts = eval["experts"] as? [String: Any], let layers = experts["layers"] as? [[String: Any]],
              let e = (layers.first?["fractions"] as? [Any])?.count, e > 0 else { return "" }
        let cell = max(14.0, min(40.0, 420.0 / Double(e)))
        let (l, t) = (56.0, 28.0)
        let w = l + cell * Double(e) + 70, h = t + cell * Double(layers.count) + 36
        let uniform = 1 / Double(e)
        var svg = "<svg xmlns='http://www.w3.org/2000/svg' width='\(Int(w))' height='\(Int(h))'>"
        svg += "<text x='\(l)' y='14'>\(escape(label))</text>"
        for (row, layer) in layers.enumerated() {
            let f = (layer["fractions"] as? [Any] ?? []).compactMap { number($0) }
            svg += "<text x='\(l - 6)' y='\(t + cell * (Double(row) + 0.5) + 4)' text-anchor='end'>layer \(row)</text>"
            for (col, v) in f.enumerated() {
                // White at the uniform share, deeper red above it, blue below.
                let d = max(-1, min(1, (v - uniform) / uniform))
                let color = d >= 0
                    ? String(format: "rgb(255,%d,%d)", Int(255 * (1 - d * 0.85)), Int(255 * (1 - d * 0.85)))
                    : String(format: "rgb(%d,%d,255)", Int(255 * (1 + d * 0.85)), Int(255 * (1 + d * 0.6)))
                svg += String(format: "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%@' stroke='#fff'><title>layer %d expert %d: %.1f%%</title></rect>",
                              l + cell * Double(col), t + cell * Double(row), cell, cell, color, row, col, 100 * v)
                if cell >= 28 {
                    svg += String(format: "<text x='%.1f' y='%.1f' text-anchor='middle' style='font-size:9px'>%.0f</text>",
                                  l + cell * (Double(col) + 0.5), t + cell * (Double(row) + 0.5) + 3, 100 * v)
                }
            }
            let cv = number(layer["cv"]) ?? 0
            svg += String(format: "<text x='%.1f' y='%.1f'>CV %.2f</text>", l + cell * Double(e) + 6, t + cell * (Double(row) + 0.5) + 4, cv)
        }
        for col in 0..<e {
            svg += "<text x='\(l + cell * (Double(col) + 0.5))' y='\(t + cell * Double(layers.count) + 14)' text-anchor='middle'>\(col)</text>"
        }
        svg += "<text x='\(l + cell * Double(e) / 2)' y='\(t + cell * Double(layers.count) + 30)' text-anchor='middle'>expert (% of assignments; white = uniform)</text>"
        return svg + "</svg>"
    }
}
