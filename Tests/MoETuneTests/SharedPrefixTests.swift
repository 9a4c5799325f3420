import XCTest
@testable import MoECore
@testable import MoEInference
@testable import MoETraining

/// Prompts that begin alike prefilled once (SharedPrefix, Decoder.copyPrefix): the grouping
/// by hand, and the logits and greedy tokens against feeding every prompt whole.
final class SharedPrefixTests: XCTestCase {
    /// Sorted: p0 = p4 = [1,2,3,4], p1 = [1,2,3,5], p2 = [1,2,9], p3 = [7,8]. {p0,p4,p1}
    /// sharing 3 tokens saves 6; adding p2 (2 shared) would save 6 too, so the first, smaller
    /// run stays; p3 shares nothing. A one-token prompt has nothing to share (its one token
    /// gives its logits).
    func testGroupsSaveTheMostTokens() {
        let prompts: [[Int32]] = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [7, 8], [1, 2, 3, 4]]
        XCTAssertEqual(SharedPrefix.groups(prompts), [PrefixGroup(members: [0, 1, 4], length: 3)])
        XCTAssertEqual(SharedPrefix.groups([[1, 2, 9, 9], [1, 2, 8], [1, 2, 7]]), [PrefixGroup(members: [0, 1, 2], length: 2)])
        XCTAssertEqual(SharedPrefix.groups([[5], [5], [5, 6]]), [])
        XCTAssertEqual(SharedPrefix.groups([[5, 6], [5, 6]]), [PrefixGroup(members: [0, 1], length: 1)])
        XCTAssertEqual(SharedPrefix.groups([[1, 2, 3]]), [])
        XCTAssertEqual(SharedPrefix.groups([[1, 2, 3], [1, 2, 4]], minimum: 3), [])
        // Two families of prompts: each its own group, the longer prefix in each.
        let two: [[Int32]] = [[1, 9, 9, 9, 4], [1, 5, 6, 7, 8], [1, 9, 9, 9, 5], [1, 5, 6, 7, 9], [1, 5, 6, 7, 3]]
        XCTAssertEqual(SharedPrefix.groups(two), [PrefixGroup(members: [0, 2], length: 4), PrefixGroup(members: [1, 3, 4], length: 4)])
        XCTAssertEqual(SharedPrefix.groups(two).reduce(0) { $0 + $1.savedTokens }, 12)
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

    /// The batch generator with shared prefixes answers as it does without them (greedy,
    /// exact products, slots refilled over several admissions), and says what it shared.
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
        for share in [false, true] {
            let g = BatchGenerator(model: model, adapters: adapters, maxLength: 16, parallel: 4)
            g.sharePrefixes = share
            g.ignoreStop = true
            var out = [[Int32]](repeating: [], count: prompts.count)
            try g.run(prompts.map { GenerationRequest(prompt: $0, options: o) }) { i, r in out[i] = r.tokens }
            answers.append(out)
            XCTAssertEqual(g.timings.promptTokens, prompts.reduce(0) { $0 + $1.count })
            if share { XCTAssertGreaterThan(g.timings.sharedPromptTokens, 10) } else { XCTAssertEqual(g.timings.sharedPromptTokens, 0) }
        }
        XCTAssertEqual(answers[0], answers[1])
        XCTAssertTrue(answers[0].allSatisfy { $0.count == 6 })
    }
}
