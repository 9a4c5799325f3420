import Foundation

/// The metrics file of a training run: one JSON object per line, appended and flushed as
/// training goes, so a crash loses nothing already written.
///   {"type": "step", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}
///   {"type": "eval", "step", "split", "loss", "perplexity", "tokens", ...}
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String

    public init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw MoETuneError.file(path: path, message: "cannot write the metrics file")
        }
        handle = h
        self.path = path
    }

    deinit { try? handle.close() }

    public func write(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        handle.write(data)
        handle.write(Data("\n".utf8))
    }

    /// Reads a metrics file back (for reports).
    public static func read(path: String) throws -> [[String: Any]] {
        try JSONL.readObjects(path: path).map(\.object)
    }
}
