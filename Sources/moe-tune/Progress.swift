import Foundation

/// A one-line progress display on stderr with rate and ETA. On a terminal it redraws in
/// place; otherwise it prints a line at most every 10 seconds and at the end.
final class ProgressLine {
    private let label: String
    private let start = Date()
    private var lastPrint = Date.distantPast
    private let isTTY = isatty(STDERR_FILENO) != 0

    init(_ label: String) { self.label = label }

    func update(done: Int, total: Int, extra: String = "") {
        let now = Date()
        let finished = done >= total
        guard finished || now.timeIntervalSince(lastPrint) >= (isTTY ? 0.2 : 10) else { return }
        lastPrint = now
        let elapsed = now.timeIntervalSince(start)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let pct = total > 0 ? 100 * done / total : 100
        let line = "\(label) \(done)/\(total) (\(pct)%) \(extra) elapsed \(formatDuration(elapsed)) ETA \(formatDuration(eta))"
        if isTTY {
            FileHandle.standardError.write(Data("\r\u{1B}[K\(line)\(finished ? "\n" : "")".utf8))
        } else {
            FileHandle.standardError.write(Data("\(line)\n".utf8))
        }
    }
}

extension ProgressLine {
    /// Prints a message on its own line without losing the progress line.
    func interrupt(_ message: String) {
        let prefix = isatty(STDERR_FILENO) != 0 ? "\r\u{1B}[K" : ""
        FileHandle.standardError.write(Data("\(prefix)\(message)\n".utf8))
    }
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60)
        : t >= 60 ? String(format: "%dm%02ds", t / 60, t % 60) : "\(t)s"
}
