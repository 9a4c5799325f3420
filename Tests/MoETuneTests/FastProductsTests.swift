import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport
import CKernels

/// The decoder's fast products (Layers/FastProducts.swift) against the exact path (weights
/// widened to fp32, sgemm): ggml blocks differ by the 8-bit rounding of the activation
/// (llama.cpp's), NF4, bf16 and fp32 only by the order of the sums.
final class FastProductsTests: XCTestCase {
    func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in rng.nextFloat() * 2 - 1 }
    }

    /// ||fast - exact|| / ||exact|| of y [rows, out] = x [rows, in] W^T, with and without accumulate.
    func relativeError(_ w: Matrix, rows n: Int, seed: UInt64) -> Double {
        let x = random(n * w.cols, seed: seed), base = random(n * w.rows, seed: seed + 1)
        var worst = 0.0
        for accumulate in [false, true] {
            var fast = base, exact = base
            x.withUnsafeBufferPointer { xp in
                linearForward(y: &fast, x: xp.baseAddress!, rows: n, weight: w, accumulate: accumulate, path: .fast)
                linearForward(y: &exact, x: xp.baseAddress!, rows: n, weight: w, accumulate: accumulate, path: .exact)
            }
            let num = zip(fast, exact).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
            let den = exact.map { Double($0) * Double($0) }.reduce(0, +)
            worst = max(worst, (num / den).squareRoot())
        }
        return worst
    }

    /// Real blocks of every ggml type (types.gguf, written by gguf-py: [3, 256] each), as
    /// the weight of a product with 1, 3 and 16 rows.
    func testGGMLBlocksAgainstTheExactPath() throws {
        let f = try GGUFFile(path: Fixtures.dir("gguf") + "/types.gguf")
        var seen = Set<GGMLType>()
        for t in f.tensors where t.type.blockSize > 1 {
            let g = GGMLWeight(type: t.type, rows: t.shape[0], cols: t.shape[1], src: f.bytes(of: t), sourceRow: { $0 })
            for n in [1, 3, 16] {
                let e = relativeError(Matrix(ggml: g), rows: n, seed: UInt64(n))
                print("fast \(t.type.name) rows \(n): relative error \(e)")
                XCTAssertLessThan(e, 2e-2, "\(t.type.name), \(n) rows")
                XCTAssertGreaterThan(e, 0, "\(t.type.name): the activation is rounded to 8 bits, so the paths differ")
            }
            seen.insert(t.type)
        }
        XCTAssertEqual(seen, [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K])
    }

    /// A larger weight of random blocks: every row split over the workers.
    func testGGMLLargeWeightSplitOverWorkers() throws {
        for type in [GGMLType.q4_0, .q8_0] {
            let rows = 300, cols = 512
            let w = random(rows * cols, seed: 7)
            let bytes = w.withUnsafeBufferPointer { GGMLQuantize.run(type, $0.baseAddress!, count: rows * cols) }
            let g = bytes.withUnsafeBytes { GGMLWeight(type: type, rows: rows, cols: cols, src: $0.baseAddress!, sourceRow: { $0 }) }
            for n in [1, 5] { XCTAssertLessThan(relativeError(Matrix(ggml: g), rows: n, seed: 3), 2e-2) }
        }
    }

    func testNF4BF16AndFP32AreExactUpToSumOrder() throws {
        let rows = 96, cols = 320
        let w = random(rows * cols, seed: 11)
        try w.withUnsafeBufferPointer { wp in
            for dq in [false, true] {
                let q = NF4Weight.quantize(wp.baseAddress!, rows: rows, cols: cols, doubleQuant: dq)
                for n in [1, 4] { XCTAssertLessThan(relativeError(Matrix(nf4: q), rows: n, seed: 5), 1e-5, "nf4 dq \(dq)") }
            }
            let b = BF16Weight(rounding: wp.baseAddress!, rows: rows, cols: cols)
            for n in [1, 4] { XCTAssertLessThan(relativeError(Matrix(bf16: b), rows: n, seed: 6), 1e-5, "bf16") }
            for n in [1, 2, 5, 16] {
                XCTAssertLessThan(relativeError(Matrix(wp.baseAddress!, rows: rows, cols: cols), rows: n, seed: 8), 1e-5, "fp32")
            }
            _ = try XCTUnwrap(wp.baseAddress)
        }
    }

    /// mt_rows_f32's AVX2 kernel against its scalar definition.
    func testRowsKernelVariantsAgree() throws {
        guard mt_rows_f32_kernel_supported(1) == 1 else { throw XCTSkip("no AVX2 on this CPU") }
        let k = 203, rows = 9, m = 6
        let w = random(rows * k, seed: 1), x = random(m * k, seed: 2)
        var a = [Float](repeating: 0, count: m * rows), b = a
        XCTAssertEqual(mt_rows_f32_with(0, w, 0, Int(rows), k, x, m, k, &a, rows, 0), 0)
        XCTAssertEqual(mt_rows_f32_with(1, w, 0, Int(rows), k, x, m, k, &b, rows, 0), 0)
        for (u, v) in zip(a, b) { XCTAssertEqual(u, v, accuracy: 1e-5 * max(1, abs(u))) }
    }

    /// The decoder's attention kernel: AVX2 against its scalar definition, with and without
    /// sinks and a window.
    func testAttentionDecodeVariantsAgree() throws {
        guard mt_attention_decode_supported(1) == 1 else { throw XCTSkip("no AVX2 on this CPU") }
        let heads = 6, group = 3, d = 40, kvDim = 2 * d, len = 37
        let q = random(heads * d, seed: 1), k = random(len * kvDim, seed: 2), v = random(len * kvDim, seed: 3)
        let sinks = random(heads, seed: 4)
        for (first, useSinks) in [(0, false), (0, true), (20, false)] {
            var a = [Float](repeating: 0, count: heads * d), b = a, scores = [Float](repeating: 0, count: len)
            sinks.withUnsafeBufferPointer { sp in
                let s = useSinks ? sp.baseAddress : nil
                _ = mt_attention_decode_with(0, &a, q, k, v, first, len - 1, heads, group, d, kvDim, 0.3, &scores, s)
                _ = mt_attention_decode_with(1, &b, q, k, v, first, len - 1, heads, group, d, kvDim, 0.3, &scores, s)
            }
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-5) }
        }
    }

    /// Decoding a GGUF (tiny-llama: Q4_K, Q5_1, Q6_K, ...) with the fast products: logits
    /// within 3e-2 of the exact path's (||fast - exact|| / ||exact|| at every step; the largest
    /// single difference over the largest logit is printed beside it). Each product is within
    /// 2e-2 (above); on these tiny random models the layers compound it to 1.6-2.6%,
    /// and the same greedy tokens wherever the exact path's top-2 margin exceeds 0.1.
    func testFastDecodingOfAGGUFFollowsTheExactPath() throws {
        for path in ["gguf/tiny-llama/model.gguf", "gguf/arch/qwen3_moe-q8_0.gguf", "gguf/arch/qwen2-q8_0.gguf"] {
            let model = try Transformer.load(directory: Fixtures.dir(path))
            let v = model.config.vocabSize
            let exact = Decoder(model: model, adapters: nil, maxLength: 64, products: .exact)
            let fast = Decoder(model: model, adapters: nil, maxLength: 64, products: .fast)
            let prompt: [Int32] = [1] + (0..<6).map { Int32(5 + $0 * 17 % (v - 5)) }
            var le = try exact.prefill(prompt), lf = try fast.prefill(prompt)
            var worst = 0.0, worstMax: Float = 0, agreed = 0
            for _ in 0..<16 {
                var scale: Float = 0, diff: Float = 0, num = 0.0, den = 0.0
                for j in 0..<v {
                    scale = max(scale, abs(le[j])); diff = max(diff, abs(le[j] - lf[j]))
                    num += Double(le[j] - lf[j]) * Double(le[j] - lf[j]); den += Double(le[j]) * Double(le[j])
                }
                worst = max(worst, (num / den).squareRoot())
                worstMax = max(worstMax, diff / scale)
                let order = (0..<v).sorted { le[$0] > le[$1] }
                let te = Int32(order[0])
                let tf = Int32((0..<v).max { lf[$0] < lf[$1] }!)
                if le[order[0]] - le[order[1]] > 0.1 { XCTAssertEqual(tf, te, "\(path): greedy token with margin > 0.1") }
                guard tf == te else { break }
                agreed += 1
                le = try exact.step(te); lf = try fast.step(te)
            }
            print("fast decoding \(path): worst relative logit difference \(worst) (largest |diff| / largest |logit| \(worstMax)), \(agreed) equal greedy tokens")
            XCTAssertLessThan(worst, 3e-2, path)
        }
    }
}
