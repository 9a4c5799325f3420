import Foundation

extension RunReport {
    /// GRPO runs: the rewards per reward function (train, and valid's greedy mean), completion
    /// lengths, KL and clip fractions, and the last evaluation's sampled completions.
    static func grpoCharts(steps: [[String: Any]], evals: [[String: Any]],
                           series: ([[String: Any]], String) -> [(Double, Double)]) -> String {
        let colors = ["#2a5cb8", "#d65f5f", "#6acc64", "#956cb4", "#ee854a", "#8c613c"]
        let names = Set(steps.flatMap { $0.keys }.filter { $0.hasPrefix("rewards/") && $0.hasSuffix("/mean") }).sorted()
        var lines = [("reward (train)", series(steps, "reward"), "#a9bfe8"), ("reward (valid, greedy)", series(evals, "reward"), "#ee854a")]
        for (i, n) in names.enumerated() { lines.append((String(n.dropFirst(8).dropLast(5)), series(steps, n), colors[i % colors.count])) }
        var body = "<h2>Rewards (per step; the weighted sum and each function's mean)</h2>" + lineChart(lines, yLabel: "reward")
        body += "<div class=row><div><h2>Completion length</h2>" + lineChart([("mean", series(steps, "completions/mean_length"), "#2a5cb8"),
            ("cut at max_new_tokens (share)", series(steps, "completions/clipped_ratio"), "#d65f5f")], yLabel: "tokens", small: true)
        body += "</div><div><h2>KL and clipping</h2>" + lineChart([("kl", series(steps, "kl"), "#956cb4"),
            ("clip_ratio/region_mean", series(steps, "clip_ratio/region_mean"), "#6acc64")], yLabel: "per token", small: true) + "</div></div>"
        if let last = evals.last, let samples = last["completions"] as? [[String: Any]], !samples.isEmpty {
            body += "<h2>Sampled completions (last evaluation)</h2><table><tr><th>prompt</th><th>completion</th><th>reward</th></tr>"
            for s in samples {
                let esc = { (x: Any?) in "\(x ?? "")".replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }
                body += "<tr><td>\(esc(s["prompt"]))</td><td>\(esc(s["completion"]))</td><td>\(esc(s["reward"]))</td></tr>"
            }
            body += "</table>"
        }
        return body
    }
}
