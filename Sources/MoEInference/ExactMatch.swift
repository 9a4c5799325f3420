import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// Exact-match accuracy of greedy generations on instruction data: for every example
/// with an expected answer, decode greedily from its prompt until EOS or the budget and
/// compare the text with the answer, both trimmed of surrounding whitespace.
public struct ExactMatchResult: Sendable {
    public var correct: Int
    public var total: Int
    /// Per "task" field: (correct, total).
    public var perTask: [String: (correct: Int, total: Int)]
    public var samples: [(prompt: String, expected: String, generated: String)]
    /// Every scored example's answer, in data order.
    public var answers: [Answer] = []
    /// The prompts' and the decoding steps' tokens and seconds.
    public var timings = GenerationTimings()
    public var accuracy: Double { total > 0 ? Double(correct) / Double(total) : 0 }

    /// One example's expected and generated text (both as given, untrimmed) and whether they matched.
    public struct Answer: Sendable, Equatable {
        public var task: String?
        public var expected: String
        public var generated: String
        public var correct: Bool
    }

    /// The answers as JSON lines: {"correct", "expected", "generated", "task"} per example.
    public func answersJSONL() throws -> Data {
        var out = Data()
        for a in answers {
            var obj: [String: Any] = ["expected": a.expected, "generated": a.generated, "correct": a.correct]
            if let task = a.task { obj["task"] = task }
            out.append(try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]))
            out.append(0x0A)
        }
        return out
    }
}

public enum ExactMatch {
    /// `parallel` sequences decode at once (continuous batching; nil: defaultParallel for
    /// this many prompts and their longest length); `products: .exact`
    /// multiplies as training does. A batch's products have more rows than one sequence's, so
    /// their sums may round differently in the last bit; greedy answers then differ only at
    /// near-ties (measured: none on 40 SmolLM2 prompts, parallel 1 against 8).
    public static func evaluate(model: Transformer, adapters: AdapterSet?, tokenizer: any TextTokenizer, dataset: Dataset,
                                maxNewTokens: Int, extraStopIds: Set<Int32> = [], parallel: Int? = 1,
                                products: ProductPath = .exact,
                                progress: ((Int, Int) -> Void)? = nil) throws -> ExactMatchResult {
        let items = dataset.examples.filter { $0.reply != nil && $0.replyStart > 0 && $0.replyStart <= $0.tokens.count }
        let longest = items.map { $0.promptIds?.count ?? $0.replyStart }.max() ?? 1
        let maxLength = min(longest + min(maxNewTokens, model.rope.maxPositions) + 1, model.rope.maxPositions)
        let lanes = parallel ?? defaultParallel(model.config, maxLength: maxLength, requests: items.count)
        let generator = BatchGenerator(model: model, adapters: adapters, maxLength: maxLength,
                                       parallel: max(1, min(lanes, items.count)),
                                       stopIds: tokenizer.stopIds.union(extraStopIds), products: products)
        var options = SamplingOptions()
        options.maxNewTokens = maxNewTokens
        let prompts = items.map { $0.promptIds ?? Array($0.tokens[0..<$0.replyStart]) }
        var generated = [[Int32]](repeating: [], count: items.count)
        var done = 0
        try generator.run(prompts.map { GenerationRequest(prompt: $0, options: options) }) { i, r in
            generated[i] = r.tokens
            done += 1
            progress?(done, items.count)
        }
        var result = ExactMatchResult(correct: 0, total: 0, perTask: [:], samples: [])
        result.timings = generator.timings
        for (i, ex) in items.enumerated() {
            try score(ex, prompt: prompts[i], generated: try tokenizer.decode(generated[i]), tokenizer: tokenizer, into: &result)
        }
        return result
    }

    /// Counts one answer: overall, per task, and among the first five samples.
    private static func score(_ ex: Example, prompt: [Int32], generated: String, tokenizer: any TextTokenizer,
                              into result: inout ExactMatchResult) throws {
        let ok = generated.trimmingCharacters(in: .whitespacesAndNewlines) == ex.reply!.trimmingCharacters(in: .whitespacesAndNewlines)
        result.total += 1
        if ok { result.correct += 1 }
        result.answers.append(.init(task: ex.task, expected: ex.reply!, generated: generated, correct: ok))
        if let task = ex.task {
            var t = result.perTask[task] ?? (0, 0)
            t.total += 1
            if ok { t.correct += 1 }
            result.perTask[task] = t
        }
        if result.samples.count < 5 {
            // The prompt as text, without a leading BOS (not every tokenizer adds one).
            let shown = prompt.first != nil && prompt.first == tokenizer.bosId ? Array(prompt.dropFirst()) : prompt
            result.samples.append((try tokenizer.decode(shown), ex.reply!, generated))
        }
    }
}
