import XCTest
@testable import MoECore
@testable import MoEInference
@testable import MoETraining

/// Prompts that begin alike prefilled once (SharedPrefix, Decoder.copyPrefix): the grouping
/// by hand, and the logits and greedy tokens against feeding every prompt whole.
final class SharedPrefixTests: XCTestCase {
    /// `newTokens` greedy tokens from one prompt, stop tokens ignored.
    func reply(_ g: BatchGenerator, _ prompt: [Int32], newTokens: Int) throws -> [Int32] {
        var o = SamplingOptions()
        o.maxNewTokens = newTokens
        g.ignoreStop = true
        var out: [Int32] = []
        try g.run([GenerationRequest(prompt: prompt, options: o)]) { _, r in out = r.tokens }
        return out
    }

    /// p0 = p4 = [1,2,3,4], p1 = [1,2,3,5], p2 = [1,2,9], p3 = [7,8]: the branch [1,2] is fed
    /// once (in p0's slot), then [3] after it (p0's slot again: p0, p1, p4 go on alike, each
    /// keeping its last token); p2 copies 2 tokens, p0, p1, p4 copy 3, p3 shares nothing. Fed
    /// 9 of 17 tokens.
    func testThePlanFeedsEachSharedBranchOnce() {
        typealias S = PrefixPlan.Segment
        let plan = SharedPrefix.plan([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [7, 8], [1, 2, 3, 4]])
        XCTAssertEqual(plan.rounds, [[S(member: 0, source: nil, from: 0, to: 2)], [S(member: 0, source: 0, from: 2, to: 3)]])
        XCTAssertEqual(plan.finals, [S(member: 0, source: 0, from: 3, to: 4), S(member: 1, source: 0, from: 3, to: 4),
                                     S(member: 2, source: 0, from: 2, to: 3), S(member: 3, source: nil, from: 0, to: 2),
                                     S(member: 4, source: 0, from: 3, to: 4)])
        XCTAssertEqual(plan.computedTokens, 9)
        // Copies of one prompt (a GRPO group): the prompt less its last token once.
        let copies = SharedPrefix.plan(Array(repeating: [5, 6, 7, 8], count: 4))
        XCTAssertEqual(copies.rounds, [[S(member: 0, source: nil, from: 0, to: 3)]])
        XCTAssertEqual(copies.computedTokens, 3 + 4)
        // Nothing to share: one-token prompts, or one prompt.
        XCTAssertEqual(SharedPrefix.plan([[5], [5], [5, 6]]).rounds, [])
        XCTAssertEqual(SharedPrefix.plan([[5], [5], [5, 6]]).computedTokens, 4)
        XCTAssertEqual(SharedPrefix.plan([[1, 2, 3]]).finals, [S(member: 0, source: nil, from: 0, to: 3)])
        // Two levels under a shared BOS, each branch fed in its first member's slot; [7] shared
        // by p1 and p3 saves one token, under minimumSaved: they feed it themselves.
        let two = SharedPrefix.plan([[1, 9, 9, 9, 4], [1, 5, 6, 7, 8], [1, 9, 9, 9, 5], [1, 5, 6, 7, 9], [1, 5, 6, 3]])
        XCTAssertEqual(two.rounds, [[S(member: 0, source: nil, from: 0, to: 1)],
                                    [S(member: 0, source: 0, from: 1, to: 4), S(member: 1, source: 0, from: 1, to: 3)]])
        XCTAssertEqual(two.finals.map(\.source), [0, 1, 0, 1, 1])
        XCTAssertEqual(two.finals.map(\.from), [4, 3, 4, 3, 3])
        XCTAssertEqual(two.computedTokens, 1 + 3 + 2 + 7)
        // Prompts each a prefix of the next (k-shot with growing k) stop at maxLevels levels.
        let growing: [[Int32]] = (1...6).map { k in Array(1...Int32(2 * k)) + [Int32(100 + k)] }
        let deep = SharedPrefix.plan(growing)
        XCTAssertEqual(deep.rounds.count, SharedPrefix.maxLevels)
        XCTAssertEqual(deep.finals[5], S(member: 5, source: 3, from: 8, to: 13))
    }

    /// A prefix prefilled in one slot and copied into two others, each then fed the rest of
    /// its prompt, gives each prompt's logits fed whole (MoE layers, LoRA on every module).
    func testACopiedPrefixGivesTheWholePromptsLogits() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        let v = model.config.vocabSize
        let prompts: [[Int32]] = [[1, 40, 47, 53, 9], [1, 40, 47, 90, 97, 103]]
        let d = Decoder(model: model, adapters: adapters, maxLength: 32, slots: 3)
        try d.prefill([1, 40, 47], slot: 2)
        try d.copyPrefix(from: 2, to: 0, count: 3)
        try d.copyPrefix(from: 2, to: 1, count: 3)
        let logits = try d.prefill(batch: prompts.map { Array($0[3...]) }, slots: [0, 1])
        for (i, p) in prompts.enumerated() {
            let alone = Decoder(model: model, adapters: adapters, maxLength: 32)
            let want = Array(UnsafeBufferPointer(start: try alone.prefill(p), count: v))
            var worst: Float = 0
            for j in 0..<v { worst = max(worst, abs(want[j] - logits[i * v + j])) }
            XCTAssertLessThan(worst, 1e-4, "prompt \(i)")
            XCTAssertEqual(d.length(of: i), p.count)
        }
        XCTAssertThrowsError(try d.copyPrefix(from: 2, to: 0, count: 4))
        XCTAssertThrowsError(try d.copyPrefix(from: 3, to: 0, count: 1))
        try d.copyPrefix(from: 0, to: 0, count: 2)
        XCTAssertEqual(d.length(of: 0), 2)
    }

    /// The batch generator with shared prefixes and reused finished caches answers as it does
    /// without them (greedy, exact products, slots refilled over several admissions), and says
    /// what it shared.
    func testGenerationWithSharedPrefixesEqualsWithout() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        var o = SamplingOptions()
        o.maxNewTokens = 6
        let prompts: [[Int32]] = (0..<10).map { (i: Int) -> [Int32] in
            let middle: [Int32] = i % 3 == 0 ? [] : [Int32(60 + i % 2)]
            return [1, 40, 47, 53] + middle + [Int32(70 + i)]
        }
        var answers: [[[Int32]]] = []
        let total = prompts.reduce(0) { $0 + $1.count }
        for (share, reuse, lanes) in [(false, false, 4), (true, false, 4), (false, true, 4), (true, true, 4), (true, false, 12)] {
            let g = BatchGenerator(model: model, adapters: adapters, maxLength: 16, parallel: lanes)
            g.sharePrefixes = share
            g.reuseFinished = reuse
            g.ignoreStop = true
            var out = [[Int32]](repeating: [], count: prompts.count)
            try g.run(prompts.map { GenerationRequest(prompt: $0, options: o) }) { i, r in out[i] = r.tokens }
            answers.append(out)
            XCTAssertEqual(g.timings.promptTokens, total)
            let shared = g.timings.sharedPromptTokens
            print("share \(share), reuse \(reuse), \(lanes) lanes: shared prompt tokens \(shared) of \(total)")
            if !share && !reuse { XCTAssertEqual(shared, 0) } else { XCTAssertGreaterThan(shared, 10) }
            // All prompts in one admission: exactly what the plan spares.
            if lanes >= prompts.count { XCTAssertEqual(shared, total - SharedPrefix.plan(prompts).computedTokens) }
        }
        for a in answers.dropFirst() { XCTAssertEqual(a, answers[0]) }
        XCTAssertTrue(answers[0].allSatisfy { $0.count == 6 })
    }

    /// A chat's next turn (the first prompt, its answer, two more tokens) reuses the finished
    /// sequence's cache, prompt and fed tokens: only the new tokens are fed, and the answer is
    /// a fresh generator's. With reuseFinished off nothing is reused.
    func testANextTurnReusesTheFinishedSequencesCache() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        func answer(_ g: BatchGenerator, _ prompt: [Int32]) throws -> [Int32] { try reply(g, prompt, newTokens: 5) }
        let first: [Int32] = [1, 40, 47, 53]
        // The whole reply kept, or only its first 2 tokens (the cache cut back to 6).
        for (reuse, replyKept) in [(true, 5), (true, 2), (false, 5)] {
            let g = BatchGenerator(model: model, adapters: adapters, maxLength: 32, parallel: 2)
            g.reuseFinished = reuse
            let reply = try answer(g, first)
            let next = first + reply.prefix(replyKept) + [9, 11]
            let before = g.timings.sharedPromptTokens
            let reused = try answer(g, next)
            // The cache held the prompt and 4 of the 5 new tokens (the last one is never fed).
            XCTAssertEqual(g.timings.sharedPromptTokens - before, reuse ? 4 + min(4, replyKept) : 0)
            XCTAssertEqual(reused, try answer(BatchGenerator(model: model, adapters: adapters, maxLength: 32, parallel: 2), next))
        }
        // A prompt unlike the held one reuses only what matches: the BOS.
        let g = BatchGenerator(model: model, adapters: adapters, maxLength: 32, parallel: 1)
        _ = try answer(g, first)
        _ = try answer(g, [1, 90, 97])
        XCTAssertEqual(g.timings.sharedPromptTokens, 1)
    }

    /// Lanes by default: 8 for a server, every prompt up to 256 for a known list, fewer when
    /// the KV caches would pass a quarter of the memory.
    func testDefaultLanes() throws {
        let c = try Transformer.load(directory: Fixtures.dir("mixtral")).config
        XCTAssertEqual(defaultParallel(c, maxLength: 64), 8)
        XCTAssertEqual(defaultParallel(c, maxLength: 64, requests: 3), 3)
        XCTAssertEqual(defaultParallel(c, maxLength: 64, requests: 200), 200)
        XCTAssertEqual(defaultParallel(c, maxLength: 64, requests: 5000), 256)
        XCTAssertEqual(defaultParallel(c, maxLength: 64, requests: 0), 1)
        // A cache of a quarter of the memory per slot leaves one lane.
        let quarter = Int(ProcessInfo.processInfo.physicalMemory / 4)
        let perPosition = 2 * c.numLayers * c.kvDim * MemoryLayout<Float>.stride
        XCTAssertEqual(defaultParallel(c, maxLength: quarter / perPosition, requests: 200), 1)
    }

    /// A prompt with a token outside the vocabulary is refused when submitted: admitted, its
    /// prefill would fail, and the prompts admitted with it would be dropped from their slots
    /// unreported (a server's clients waiting for ever). The valid prompt beside it runs.
    func testAPromptOutsideTheVocabularyIsRefusedWhenSubmitted() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let v = Int32(model.config.vocabSize)
        var o = SamplingOptions()
        o.maxNewTokens = 3
        let g = BatchGenerator(model: model, adapters: nil, maxLength: 16, parallel: 2)
        g.ignoreStop = true
        try g.submit(GenerationRequest(prompt: [1, 40, 47], options: o), id: 0)
        XCTAssertThrowsError(try g.submit(GenerationRequest(prompt: [1, 40, v], options: o), id: 1))
        XCTAssertThrowsError(try g.submit(GenerationRequest(prompt: [1, -1], options: o), id: 2))
        var finished: [Int: GenerationResult] = [:]
        while g.hasWork { try g.advance { id, r in finished[id] = r } }
        XCTAssertEqual(Array(finished.keys), [0])
        XCTAssertEqual(finished[0]?.tokens.count, 3)
    }

    /// Two conversations taking turns on two slots, their prompts sharing a 3-token header:
    /// each next turn finds its own conversation cached (the other's first turn went to the
    /// unused slot, the header copied there, not to the slot whose held tokens matched only
    /// the header), and answers as a fresh generator does. A repeated prompt is answered from
    /// the cache without evicting the other conversation.
    func testConversationsTakingTurnsKeepTheirOwnCaches() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        func answer(_ g: BatchGenerator, _ prompt: [Int32]) throws -> [Int32] { try reply(g, prompt, newTokens: 4) }
        let g = BatchGenerator(model: model, adapters: nil, maxLength: 32, parallel: 2)
        var a: [Int32] = [1, 5, 6, 40, 47], b: [Int32] = [1, 5, 6, 90, 97]
        a += try answer(g, a)
        let before = g.timings.sharedPromptTokens
        b += try answer(g, b)
        XCTAssertEqual(g.timings.sharedPromptTokens - before, 3)
        for turn in 0..<2 {
            for i in 0..<2 {
                let prompt = (i == 0 ? a : b).dropLast() + [9, Int32(11 + turn)]
                let before = g.timings.sharedPromptTokens
                let reply = try answer(g, Array(prompt))
                // The cache held the conversation less its last token, never fed.
                XCTAssertEqual(g.timings.sharedPromptTokens - before, prompt.count - 2, "turn \(turn), conversation \(i)")
                XCTAssertEqual(reply, try answer(BatchGenerator(model: model, adapters: nil, maxLength: 32, parallel: 2), Array(prompt)))
                if i == 0 { a = Array(prompt) + reply } else { b = Array(prompt) + reply }
            }
        }
        let again = Array(b.dropLast(4)), shared = g.timings.sharedPromptTokens
        XCTAssertEqual(try answer(g, again), Array(b.suffix(4)))
        let next = Array(a.dropLast()) + [9, 20]
        _ = try answer(g, next)
        XCTAssertEqual(g.timings.sharedPromptTokens - shared, again.count - 1 + next.count - 2)
    }
}

