import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Incremental decoding with the KV cache against the batched forward pass and against
/// transformers' generate.
final class GenerationTests: XCTestCase {
    func greedyRef(_ name: String) throws -> (prompt: [Int32], tokens: [Int32]) {
        let j = try Fixtures.referenceJSON(name)
        return ((j["greedy_prompt"] as! [NSNumber]).map { $0.int32Value }, (j["greedy_tokens"] as! [NSNumber]).map { $0.int32Value })
    }

    /// Greedy decoding through the Decoder, not stopping at EOS.
    func decode(_ model: Transformer, _ adapters: AdapterSet?, prompt: [Int32], count: Int) throws -> [Int32] {
        let d = Decoder(model: model, adapters: adapters, maxLength: prompt.count + count + 1)
        var logits: UnsafeMutablePointer<Float>!
        for t in prompt { logits = try d.step(t) }
        var sampler = TokenSampler(options: SamplingOptions(), vocab: model.config.vocabSize)
        var out: [Int32] = []
        for _ in 0..<count {
            let t = sampler.next(logits, vocab: model.config.vocabSize)
            out.append(t)
            logits = try d.step(t)
        }
        return out
    }

    func testGreedyTokensMatchTransformersGenerate() throws {
        for name in ["llama", "mixtral", "mixtral-bf16"] {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            let ref = try greedyRef(name)
            let ours = try decode(model, nil, prompt: ref.prompt, count: ref.tokens.count)
            XCTAssertEqual(ours, ref.tokens, name)
        }
    }

    func testKVCacheMatchesFullRecomputation() throws {
        // With an adapter on every module kind, so LoRA paths are covered too.
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        // Several prompts, so that at least one generates a few tokens before EOS.
        var longest = 0
        for start in [40, 90, 150, 210, 270, 330] as [Int32] {
            let prompt: [Int32] = [1, start, start + 7, start + 13, 9]
            var o = SamplingOptions()
            o.maxNewTokens = 20
            let cached = try Generator(model: model, adapters: adapters, maxLength: 64).generate(prompt: prompt, options: o)
            let full = try model.greedyWithoutCache(prompt: prompt, adapters: adapters, maxNewTokens: 20)
            XCTAssertEqual(cached, full, "prompt starting \(start)")
            longest = max(longest, cached.count)
        }
        XCTAssertGreaterThan(longest, 3, "some prompt must generate several tokens")
        // The decoder's logits equal the batched forward's at every position.
        let seq: [Int32] = [1] + (0..<23).map { Int32(3 + ($0 * 37) % 370) }
        let d = Decoder(model: model, adapters: adapters, maxLength: 64)
        let state = ForwardState(config: model.config, batch: 1, seq: seq.count, training: false, loraRank: adapters.maxRank)
        _ = try model.forward(TokenBatch(sequences: [seq], counted: [Array(repeating: false, count: seq.count)]), state: state, adapters: adapters)
        var worst: Float = 0
        for (i, t) in seq.enumerated() {
            let l = try d.step(t)
            for j in 0..<model.config.vocabSize { worst = max(worst, abs(l[j] - state.logits[i * model.config.vocabSize + j])) }
        }
        XCTAssertLessThan(worst, 1e-4)
    }

    /// A prompt fed as one batch (prefill, in chunks of maxRows) gives the logits of feeding
    /// it a token at a time, and later steps attend over the same cache.
    func testPrefillMatchesTokenByTokenFeeding() throws {
        for name in ["llama", "mixtral", "qwen2_moe", "deepseek_v2", "gpt_oss"] {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            let v = model.config.vocabSize
            let prompt: [Int32] = [1] + (0..<20).map { Int32(3 + ($0 * 41) % 300) }
            let one = Decoder(model: model, adapters: nil, maxLength: 64)
            var a: [Float] = []
            for t in prompt { a = Array(UnsafeBufferPointer(start: try one.step(t), count: v)) }
            for chunk in [64, 7] {
                let batched = Decoder(model: model, adapters: nil, maxLength: 64, maxRows: chunk)
                let b = Array(UnsafeBufferPointer(start: try batched.prefill(prompt), count: v))
                XCTAssertEqual(batched.length, prompt.count)
                XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 1e-4, "\(name) chunk \(chunk)")
                let a2 = Array(UnsafeBufferPointer(start: try one.step(5), count: v))
                let b2 = Array(UnsafeBufferPointer(start: try batched.step(5), count: v))
                XCTAssertLessThan(zip(a2, b2).map { abs($0 - $1) }.max()!, 1e-4, "\(name) chunk \(chunk), next step")
                one.reset()
                for t in prompt { a = Array(UnsafeBufferPointer(start: try one.step(t), count: v)) }
            }
        }
    }

    /// Several sequences in one decoding step (one row each, own caches) give each sequence's
    /// logits alone.
    func testBatchedStepMatchesEachSequenceAlone() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        let v = model.config.vocabSize
        let prompts: [[Int32]] = [[1, 40, 47, 53], [1, 90, 97, 103, 9, 11, 12], [1, 150]]
        let batched = Decoder(model: model, adapters: adapters, maxLength: 32, slots: 3)
        for (s, p) in prompts.enumerated() { try batched.prefill(p, slot: s) }
        let next: [Int32] = [7, 8, 9], slots: [Int32] = [0, 1, 2]
        let logits = try next.withUnsafeBufferPointer { t in
            try slots.withUnsafeBufferPointer { try batched.step(tokens: t, slots: $0) }
        }
        for (s, p) in prompts.enumerated() {
            let alone = Decoder(model: model, adapters: adapters, maxLength: 32)
            for t in p { try alone.step(t) }
            let l = try alone.step(next[s])
            var worst: Float = 0
            for j in 0..<v { worst = max(worst, abs(l[j] - logits[s * v + j])) }
            XCTAssertLessThan(worst, 1e-4, "sequence \(s)")
            XCTAssertEqual(batched.length(of: s), p.count + 1)
        }
    }

    /// Several prompts prefilled in one batch of rows (mixed across chunks, with a head
    /// adapter and MoE layers) give each prompt's logits alone, and the same next step.
    func testBatchedPrefillMatchesEachPromptAlone() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        let v = model.config.vocabSize
        let prompts: [[Int32]] = [[1, 40, 47, 53], [1, 90, 97, 103, 9, 11, 12], [1, 150]]
        for maxRows in [3, 5, 64] {
            let batched = Decoder(model: model, adapters: adapters, maxLength: 32, slots: 3, maxRows: maxRows)
            let logits = try batched.prefill(batch: [prompts[2], prompts[0], prompts[1]], slots: [2, 0, 1])
            for (i, s) in [2, 0, 1].enumerated() {
                let alone = Decoder(model: model, adapters: adapters, maxLength: 32)
                let want = try alone.prefill(prompts[s])
                var worst: Float = 0
                for j in 0..<v { worst = max(worst, abs(want[j] - logits[i * v + j])) }
                XCTAssertLessThan(worst, 1e-4, "prompt \(s), maxRows \(maxRows)")
                XCTAssertEqual(batched.length(of: s), prompts[s].count)
            }
            let next: [Int32] = [7], slot: [Int32] = [1]
            let out = try next.withUnsafeBufferPointer { t in try slot.withUnsafeBufferPointer { try batched.step(tokens: t, slots: $0) } }
            let step = Array(UnsafeBufferPointer(start: out, count: v))
            let alone = Decoder(model: model, adapters: adapters, maxLength: 32)
            try alone.prefill(prompts[1])
            let want = Array(UnsafeBufferPointer(start: try alone.step(7), count: v))
            XCTAssertLessThan(zip(want, step).map { abs($0 - $1) }.max()!, 1e-4, "next step, maxRows \(maxRows)")
        }
    }

    /// A refused batched prefill (a repeated slot, a prompt too long, a token outside the
    /// vocabulary) feeds nothing.
    func testARefusedBatchedPrefillFeedsNothing() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let d = Decoder(model: model, adapters: nil, maxLength: 4, slots: 2)
        XCTAssertThrowsError(try d.prefill(batch: [[1, 2], [1, 2]], slots: [0, 0]))
        XCTAssertThrowsError(try d.prefill(batch: [[1, 2], [1, 2, 3, 4, 5]], slots: [0, 1]))
        XCTAssertThrowsError(try d.prefill(batch: [[1, 2], [Int32(model.config.vocabSize)]], slots: [0, 1]))
        XCTAssertThrowsError(try d.prefill(batch: [[1, 2], []], slots: [0, 1]))
        XCTAssertEqual([d.length(of: 0), d.length(of: 1)], [0, 0])
    }

    /// A refused call moves no slot on: a step whose second row does not fit leaves the first
    /// row's slot where it was, and a too-long prompt is refused before any of it is fed.
    func testARefusedCallLeavesEverySlotAsItWas() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let d = Decoder(model: model, adapters: nil, maxLength: 4, slots: 2)
        try d.prefill([1, 5, 6], slot: 0)
        try d.prefill([1, 5, 6, 7], slot: 1)
        let tokens: [Int32] = [8, 9], slots: [Int32] = [0, 1]
        XCTAssertThrowsError(try tokens.withUnsafeBufferPointer { t in
            try slots.withUnsafeBufferPointer { try d.step(tokens: t, slots: $0) }
        })
        XCTAssertEqual(d.length(of: 0), 3)
        XCTAssertEqual(d.length(of: 1), 4)
        XCTAssertThrowsError(try d.prefill([1, 2], slot: 0))
        XCTAssertEqual(d.length(of: 0), 3)
        try d.step(8)
        XCTAssertEqual(d.length(of: 0), 4)
    }

    /// A budget of 0 new tokens gives none, from both generators.
    func testAZeroBudgetGeneratesNothing() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        var o = SamplingOptions()
        o.maxNewTokens = 0
        XCTAssertEqual(try Generator(model: model, adapters: nil, maxLength: 16).generate(prompt: [1, 5], options: o), [])
        var results: [GenerationResult] = []
        try BatchGenerator(model: model, adapters: nil, maxLength: 16, parallel: 2)
            .run([GenerationRequest(prompt: [1, 5], options: o)]) { _, r in results.append(r) }
        XCTAssertEqual(results.map(\.tokens), [[]])
    }

    func testSamplingIsSeededAndRespectsTopK() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let g = Generator(model: model, adapters: nil, maxLength: 64)
        var o = SamplingOptions()
        o.temperature = 1.0; o.topK = 5; o.seed = 42; o.maxNewTokens = 15
        let a = try g.generate(prompt: [1, 50, 60], options: o)
        let b = try g.generate(prompt: [1, 50, 60], options: o)
        XCTAssertEqual(a, b, "same seed, same tokens")
        o.seed = 43
        let c = try g.generate(prompt: [1, 50, 60], options: o)
        XCTAssertNotEqual(a, c)
        // top-k 1 is greedy.
        o.topK = 1
        let greedy = try g.generate(prompt: [1, 50, 60], options: { var p = SamplingOptions(); p.maxNewTokens = 15; return p }())
        XCTAssertEqual(try g.generate(prompt: [1, 50, 60], options: o), greedy)
    }
}

extension GenerationTests {
    /// Exact match compares trimmed greedy generations with the expected answers, per task.
    func testExactMatchCountsPerTask() throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir("mixtral"))
        let tok = loaded.tokenizer
        let g = Generator(model: loaded.model, adapters: nil, maxLength: 64)
        var o = SamplingOptions()
        o.maxNewTokens = 6
        let prompt = "Add 3 and 4."
        let own = try tok.decode(try g.generate(prompt: tok.encode(prompt, addSpecialTokens: true), options: o))
        let chatPrompt = try ChatTemplate.llama2.prompt([("user", "Hello")])
        let ownChat = try tok.decode(try g.generate(prompt: tok.encode(chatPrompt, addSpecialTokens: true), options: o))
        let dir = try makeTempDir(self)
        let lines = [
            ["task": "a", "prompt": prompt, "completion": "  " + own + " "],
            ["task": "b", "prompt": prompt, "completion": own + " wrong"],
            ["task": "b", "messages": [["role": "user", "content": "Hello"], ["role": "assistant", "content": ownChat]]] as [String: Any],
        ]
        let text = try lines.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(separator: "\n")
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/d.jsonl"))
        let ds = try Dataset.load(path: dir + "/d.jsonl", tokenizer: tok, vocabSize: loaded.model.config.vocabSize, options: DataOptions())
        let r = try ExactMatch.evaluate(model: loaded.model, adapters: nil, tokenizer: tok, dataset: ds, maxNewTokens: 6)
        XCTAssertEqual(r.total, 3)
        XCTAssertEqual(r.correct, 2)
        XCTAssertEqual(r.perTask["a"]!.correct, 1)
        XCTAssertEqual(r.perTask["b"]!.correct, 1)
        XCTAssertEqual(r.perTask["b"]!.total, 2)
        XCTAssertEqual(r.answers.map(\.correct), [true, false, true])
        XCTAssertEqual(r.answers.map(\.generated), [own, own, ownChat])
        XCTAssertEqual(r.answers.map(\.task), ["a", "b", "b"])
        let written = String(decoding: try r.answersJSONL(), as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(written.count, 3)
        let first = try JSONSerialization.jsonObject(with: Data(written[1].utf8)) as! [String: Any]
        XCTAssertEqual(first["generated"] as? String, own)
        XCTAssertEqual(first["correct"] as? Bool, false)
        // Batched (three sequences at once) gives each example the answer decoded alone.
        let batched = try ExactMatch.evaluate(model: loaded.model, adapters: nil, tokenizer: tok, dataset: ds, maxNewTokens: 6, parallel: 3)
        XCTAssertEqual(batched.answers, r.answers)
    }
}
