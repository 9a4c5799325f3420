import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// Measures tokenization speed (MB/s of UTF-8 text) on the "text" fields of a JSONL file.
struct BenchTokenizerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-tokenizer",
        abstract: "Measure tokenizer MB/s on one core and on all cores.",
        discussion: "Compare with scripts/bench_tokenizer.py (the Rust tokenizers library, one thread).",
        shouldDisplay: false)

    @Option(help: "Folder with tokenizer.json (or tokenizer.model).")
    var tokenizer: String

    @Option(help: "JSONL file whose \"text\" fields are tokenized.")
    var data: String

    func run() throws {
        try runReportingErrors {
            let tok = try TokenizerLoader.load(directory: tokenizer)
            let texts = try JSONL.readObjects(path: data).compactMap { $0.object["text"] as? String }
            let bytes = texts.reduce(0) { $0 + $1.utf8.count }
            let mb = Double(bytes) / 1e6
            print(String(format: "%d texts, %.1f MB", texts.count, mb))
            var t0 = Date()
            var tokens = 0
            for t in texts { tokens += try tok.encode(t).count }
            let one = Date().timeIntervalSince(t0)
            print(String(format: "1 thread: %d tokens in %.2f s = %.1f MB/s", tokens, one, mb / one))
            let cores = ProcessInfo.processInfo.activeProcessorCount
            let chunk = 256
            let chunks = (texts.count + chunk - 1) / chunk
            t0 = Date()
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                for k in (c * chunk)..<min(texts.count, (c + 1) * chunk) { _ = try? tok.encode(texts[k]) }
            }
            let all = Date().timeIntervalSince(t0)
            print(String(format: "%d threads: %.2f s = %.1f MB/s", cores, all, mb / all))
        }
    }
}
