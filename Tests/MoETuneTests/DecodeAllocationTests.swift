import Foundation
import XCTest
@testable import MoECore
@testable import MoEInference

/// The decoding loop allocates nothing per token: Generator.generate (prefill, sampling,
/// fast-path decoding steps) run for 16 and for 80 new tokens makes the same number of
/// allocations (up to a few that the thread pool varies by). The count comes from scripts/alloc_count.c, preloaded by
/// scripts/check_decode_allocs.sh, which runs this test (CI: .ci/run); skipped without it.
final class DecodeAllocationTests: XCTestCase {
    typealias Counter = @convention(c) () -> Int

    func testDecodingAllocatesNothingPerToken() throws {
        guard let symbol = dlsym(nil, "mt_alloc_count") else {
            throw XCTSkip("needs scripts/alloc_count.c preloaded: bash scripts/check_decode_allocs.sh")
        }
        let count = unsafeBitCast(symbol, to: Counter.self)
        for path in ["gguf/tiny-llama/model.gguf", "gguf/arch/qwen3_moe-q8_0.gguf"] {
            let model = try Transformer.load(directory: Fixtures.dir(path))
            let generator = Generator(model: model, adapters: nil, maxLength: 128, products: .fast)
            generator.ignoreStop = true
            let prompt: [Int32] = [1, 9, 26, 43, 60, 77]
            for temperature in [0.0, 0.8] {
                var options = SamplingOptions()
                options.temperature = temperature
                options.topP = temperature > 0 ? 0.9 : 1
                func allocations(_ tokens: Int) throws -> Int {
                    options.maxNewTokens = tokens
                    let before = count()
                    let out = try generator.generate(prompt: prompt, options: options)
                    XCTAssertEqual(out.count, tokens)
                    return count() - before
                }
                _ = try allocations(8)   // the scratch grows to its size once
                let short = try allocations(16), long = try allocations(80)
                print("decode allocations \(path), temperature \(temperature): \(short) for 16 tokens, \(long) for 80")
                // One allocation a token adds 64; the MoE fixture's thread pool varies by a few.
                XCTAssertLessThan(abs(long - short), 16, "\(path), temperature \(temperature): \(long - short) allocations for 64 more tokens")
            }
        }
    }
}
