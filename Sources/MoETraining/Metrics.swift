import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// The metrics file of a training run: one JSON object per line, appended as training
/// goes, so a crash loses nothing already written.
///   {"type": "step", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}
///   {"type": "eval", "step", "split", "loss", "perplexity", "tokens", ...}
///   {"type": "run_options", "options": {...}}   (first line of each start or resume; no step)
/// Each line goes out in one write(2) on a file opened O_APPEND; a line the disk could not
/// take whole is cut off again (the file is truncated to its length before the line), so
/// the file holds whole lines only. A failed write is a typed error.
public final class MetricsLog {
    private let fd: Int32
    public let path: String

    /// Starts a new file, or with `resumeAfter` keeps the lines of an existing one up to
    /// that step (a killed run may have logged past its last checkpoint), dropping also
    /// the final evaluations at that step when `finalStep` equals it (they are redone),
    /// and any cut-off last line; the run_options lines of earlier starts stay.
    public init(path: String, resumeAfter step: Int? = nil, finalStep: Int = .max) throws {
        self.path = path
        var kept = Data()
        if let step, let old = FileManager.default.contents(atPath: path) {
            for line in old.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
                guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
                guard let s = obj["step"] as? Int else {
                    if obj["type"] as? String == "run_options" { kept.append(Data(line)); kept.append(UInt8(ascii: "\n")) }
                    continue
                }
                if s > step || (s == step && s == finalStep && obj["type"] as? String == "eval") { continue }
                kept.append(Data(line))
                kept.append(UInt8(ascii: "\n"))
            }
        }
        if step != nil {
            try AtomicFile.write(kept, to: path)
        }
        let flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (step == nil ? O_TRUNC : 0)
        let fd = open(path, flags, 0o644)
        guard fd >= 0 else {
            throw MoETuneError.file(path: path, message: "cannot write the metrics file: \(String(cString: strerror(errno)))")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    public func write(_ object: [String: Any]) throws {
        guard JSONSerialization.isValidJSONObject(object),
              var data = try? JSONSerialization.data(withJSONObject: object, options: Self.options(object)) else {
            throw MoETuneError.file(path: path, message: "cannot encode a metrics line (a value that is not finite?): \(object.keys.sorted())")
        }
        data.append(UInt8(ascii: "\n"))
        let before = lseek(fd, 0, SEEK_END)
        do {
            if let e = AtomicFile.injectedError?(path) { throw AtomicFile.error(e, path: path, bytes: data.count) }
            let n = data.withUnsafeBytes { Foundation.write(fd, $0.baseAddress!, $0.count) }
            if n < 0 { throw AtomicFile.error(errno, path: path, bytes: data.count) }
            if n < data.count { throw AtomicFile.error(ENOSPC, path: path, bytes: data.count) }
        } catch {
            if before >= 0 { ftruncate(fd, before) }
            throw error
        }
    }

    /// Keys with a slash (TRL's names: rewards/chosen) are written as they are, not as "rewards\\/chosen";
    /// lines without one are encoded as they always were.
    static func options(_ object: [String: Any]) -> JSONSerialization.WritingOptions {
        object.keys.contains { $0.contains("/") } ? [.sortedKeys, .withoutEscapingSlashes] : [.sortedKeys]
    }

    /// Reads a metrics file back (for reports).
    public static func read(path: String) throws -> [[String: Any]] {
        try JSONL.readObjects(path: path).map(\.object)
    }
}
