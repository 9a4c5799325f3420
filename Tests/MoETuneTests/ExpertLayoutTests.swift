import Foundation
import XCTest
@testable import MoEFormats
@testable import MoECore

/// ExpertLayout, the codec of every on-disk expert layout: per-expert matrices written into
/// each layout and read back bit for bit, and reads of fixture files checked against values
/// picked from them by hand (numpy on the raw tensors: see each test).
final class ExpertLayoutTests: XCTestCase {
    /// Odd sizes so that a swapped dimension shows: E 3, I 5, H 7.
    let d = ExpertLayout.Dimensions(experts: 3, inter: 5, hidden: 7)

    /// The tensor that holds expert x's `part` in `layout` (index into the tensors of
    /// `tensorShapes`): fused layouts put gate and up in one tensor, stacked one per part,
    /// perExpert one per expert and part.
    func tensorIndex(_ layout: ExpertLayout, _ part: FeedForwardPart, expert x: Int) -> Int {
        switch layout {
        case .fused, .transposedInterleaved: return part == .down ? 1 : 0
        case .stacked: return part.rawValue
        case .perExpert: return x * 3 + part.rawValue
        }
    }

    func tensorShapes(_ layout: ExpertLayout) -> [[Int]] {
        switch layout {
        case .fused, .transposedInterleaved: return [layout.shape(gateUp: true, d), layout.shape(gateUp: false, d)]
        case .stacked: return [layout.shape(gateUp: true, d), layout.shape(gateUp: true, d), layout.shape(gateUp: false, d)]
        case .perExpert:
            return (0..<d.experts).flatMap { _ in FeedForwardPart.allCases.map { p in [ExpertLayout.matrixShape(p, d).rows, ExpertLayout.matrixShape(p, d).cols] } }
        }
    }

    /// Every layout: random per-expert gate, up and down written into the layout's tensors
    /// (first filled with NaN) fill every element exactly once and read back bit for bit.
    func testEveryLayoutRoundTripsPerExpertMatrices() {
        var rng = SystemRandomNumberGenerator()
        for layout in ExpertLayout.allCases {
            var tensors = tensorShapes(layout).map { [Float](repeating: .nan, count: $0.reduce(1, *)) }
            var matrices: [[Float]] = []
            for x in 0..<d.experts {
                for p in FeedForwardPart.allCases {
                    let s = layout.slice(p, expert: x, d)
                    XCTAssertEqual([s.rows, s.cols], [ExpertLayout.matrixShape(p, d).rows, ExpertLayout.matrixShape(p, d).cols])
                    let w = (0..<(s.rows * s.cols)).map { _ in Float.random(in: -1...1, using: &rng) }
                    matrices.append(w)
                    let t = tensorIndex(layout, p, expert: x)
                    tensors[t].withUnsafeMutableBufferPointer { s.write(w, into: $0.baseAddress!) }
                }
            }
            XCTAssertFalse(tensors.joined().contains { $0.isNaN }, "\(layout): the slices cover every element")
            var k = 0
            for x in 0..<d.experts {
                for p in FeedForwardPart.allCases {
                    let s = layout.slice(p, expert: x, d)
                    var back = [Float](repeating: 0, count: s.rows * s.cols)
                    tensors[tensorIndex(layout, p, expert: x)].withUnsafeBufferPointer { s.read($0.baseAddress!, into: &back) }
                    XCTAssertEqual(back.map(\.bitPattern), matrices[k].map(\.bitPattern), "\(layout) expert \(x) \(p)")
                    k += 1
                }
            }
        }
    }

    /// `add` adds where `write` writes; the biases of the transposed layout round trip too.
    func testAddAndBiasesRoundTrip() {
        let layout = ExpertLayout.transposedInterleaved
        var t = [Float](repeating: 1, count: layout.shape(gateUp: true, d).reduce(1, *))
        let s = layout.slice(.up, expert: 2, d)
        let w = (0..<(s.rows * s.cols)).map { Float($0) }
        t.withUnsafeMutableBufferPointer { s.add(w, into: $0.baseAddress!) }
        XCTAssertEqual(t[s.index(4, 6)], 1 + w[4 * s.cols + 6])
        XCTAssertEqual(t.filter { $0 != 1 }.count, w.count - 1)   // w[0] is 0
        var bias = [Float](repeating: .nan, count: layout.biasShape(gateUp: true, d).reduce(1, *))
        for x in 0..<d.experts {
            for p in [FeedForwardPart.gate, .up] {
                let b = (0..<d.inter).map { Float(x * 100 + p.rawValue * 10 + $0) }
                bias.withUnsafeMutableBufferPointer { layout.biasSlice(p, expert: x, d).write(b, into: $0.baseAddress!) }
            }
        }
        XCTAssertFalse(bias.contains { $0.isNaN })
        // Interleaved: expert 1's up bias row 3 at column 2*3 + 1.
        XCTAssertEqual(bias[1 * 2 * d.inter + 7], 113)
        XCTAssertEqual(layout.biasSlice(.down, expert: 2, d).offset, 2 * d.hidden)
    }

    /// gate_up's rows: gate then up, or interleaved; TransposedWeight's view of a slice.
    func testGateUpRowsAndTransposedView() {
        XCTAssertEqual(ExpertLayout.fused.gateUpRow(.up, 3, inter: 5), 8)
        XCTAssertEqual(ExpertLayout.fused.gateUpRow(.gate, 3, inter: 5), 3)
        XCTAssertEqual(ExpertLayout.transposedInterleaved.gateUpRow(.up, 3, inter: 5), 7)
        XCTAssertEqual(ExpertLayout.transposedInterleaved.gateUpRow(.gate, 3, inter: 5), 6)
        let t = ExpertLayout.transposedInterleaved
        XCTAssertTrue(t.slice(.up, expert: 2, d).transposedView == (2 * 7, 7, 2, 1))
        XCTAssertTrue(t.slice(.down, expert: 1, d).transposedView == (1 * 5, 5, 1, 0))
        XCTAssertTrue(ExpertLayout.fused.slice(.up, expert: 1, d).isContiguous)
        // gateUpRow applies to the layouts with a gate_up tensor, the biases to GPT-OSS's.
        XCTAssertEqual(ExpertLayout.allCases.filter(\.fusesGateUp), [.fused, .transposedInterleaved])
        XCTAssertEqual(ExpertLayout.allCases.filter(\.hasBiases), [.transposedInterleaved])
        XCTAssertFalse(t.slice(.gate, expert: 0, d).isContiguous)
        // GGUF's stacked tensors: [E, rows, cols], expert x the x-th matrix, in values and bytes.
        XCTAssertEqual(ExpertLayout.stackedShape(experts: 3, matrix: [5, 7]), [3, 5, 7])
        XCTAssertTrue(ExpertLayout.isStacked([3, 5, 7], experts: 3))
        XCTAssertFalse(ExpertLayout.isStacked([5, 7], experts: 3))
        XCTAssertEqual(ExpertLayout.stackedMatrixShape([3, 5, 7]), [5, 7])
        XCTAssertEqual(ExpertLayout.stacked.slice(.down, expert: 2, d), ExpertLayout.stackedSlice(expert: 2, rows: 7, cols: 5))
        XCTAssertEqual(ExpertLayout.stackedByteOffset(expert: 2, rows: 5, rowBytes: 34), 2 * 5 * 34)
    }

    /// Each family's layout as a checkpoint holds it.
    func testLayoutOfEachFixture() throws {
        for (dir, layout) in [("granitemoe", ExpertLayout.fused), ("gpt_oss", .transposedInterleaved), ("olmoe", .perExpert), ("mixtral", .perExpert)] {
            let ck = try Checkpoint(directory: Fixtures.dir(dir))
            XCTAssertEqual(ExpertLayout.of(ck.config.family, layer: 0, contains: ck.contains), layout, dir)
            XCTAssertEqual(layout.tensors(ck.config.family, layer: 0, contains: ck.contains) == nil, layout == .perExpert, dir)
        }
    }

    /// One expert's value read from each layout's fixture tensor, against the value numpy
    /// gives at the index the layout's definition names (bit patterns).
    func testReadsMatchValuesPickedFromFixtures() throws {
        func value(_ layout: ExpertLayout, _ t: UnsafePointer<Float>, _ part: FeedForwardPart, expert x: Int,
                   _ o: Int, _ k: Int, _ d: ExpertLayout.Dimensions) -> UInt32 {
            let s = layout.slice(part, expert: x, d)
            var w = [Float](repeating: 0, count: s.rows * s.cols)
            s.read(t, into: &w)
            return w[o * s.cols + k].bitPattern
        }
        // Granite input_linear [8, 64, 64] (I 32, H 64): gate (3, 5, 7) = T[3, 5, 7], up = T[3, 37, 7];
        // output_linear [8, 64, 32]: down (6, 10, 20) = T[6, 10, 20].
        let granite = try Checkpoint(directory: Fixtures.dir("granitemoe"))
        let g = ExpertLayout.Dimensions(granite.config), gt = ExpertLayout.fused.tensors(granite.config.family, layer: 0, contains: granite.contains)!
        let gu = try granite.floats(gt.gateUp, shape: ExpertLayout.fused.shape(gateUp: true, g))
        let gd = try granite.floats(gt.down, shape: ExpertLayout.fused.shape(gateUp: false, g))
        XCTAssertEqual(value(.fused, gu, .gate, expert: 3, 5, 7, g), 0x3e05e148)
        XCTAssertEqual(value(.fused, gu, .up, expert: 3, 5, 7, g), 0x3dd0654d)
        XCTAssertEqual(value(.fused, gd, .down, expert: 6, 10, 20, g), 0xbe471177)
        // GPT-OSS gate_up_proj [4, 40, 48] (I 24, H 40): gate (2, 5, 7) = T[2, 7, 10], up = T[2, 7, 11];
        // down_proj [4, 24, 40]: down (1, 3, 9) = T[1, 9, 3]; gate_up_proj_bias [4, 48]: up bias (3, 4) = B[3, 9].
        let oss = try Checkpoint(directory: Fixtures.dir("gpt_oss"))
        let o = ExpertLayout.Dimensions(oss.config), layout = ExpertLayout.transposedInterleaved
        let ot = layout.tensors(oss.config.family, layer: 0, contains: oss.contains)!
        let ogu = try oss.floats(ot.gateUp, shape: layout.shape(gateUp: true, o))
        let odn = try oss.floats(ot.down, shape: layout.shape(gateUp: false, o))
        XCTAssertEqual(value(layout, ogu, .gate, expert: 2, 5, 7, o), 0xbd68aa52)
        XCTAssertEqual(value(layout, ogu, .up, expert: 2, 5, 7, o), 0xbd2ea103)
        XCTAssertEqual(value(layout, odn, .down, expert: 1, 3, 9, o), 0x3df0425f)
        let bias = try oss.floats(ot.gateUpBias, shape: layout.biasShape(gateUp: true, o))
        XCTAssertEqual(bias[layout.biasSlice(.up, expert: 3, o).index(4, 0)].bitPattern, 0xbd6f20d8)
        // OLMoE experts.2.down_proj.weight [64, 32]: (10, 20).
        let olmoe = try Checkpoint(directory: Fixtures.dir("olmoe"))
        let p = ExpertLayout.Dimensions(olmoe.config)
        let pd = try olmoe.floats(olmoe.config.family.weight(.expert(2, .down), layer: 0), shape: [64, 32])
        XCTAssertEqual(value(.perExpert, pd, .down, expert: 2, 10, 20, p), 0xbdd171ff)
        // GGUF blk.0.ffn_up_exps.weight [8, 32, 64] (gguf-py dims reversed): up (2, 5, 7) = T[2, 5, 7];
        // ffn_down_exps [8, 64, 32]: down (6, 10, 20) = T[6, 10, 20].
        let gguf = try GGUFFile(path: Fixtures.dir("gguf/arch") + "/olmoe.gguf")
        let up = try gguf.floats("blk.0.ffn_up_exps.weight"), down = try gguf.floats("blk.0.ffn_down_exps.weight")
        up.withUnsafeBufferPointer { XCTAssertEqual(value(.stacked, $0.baseAddress!, .up, expert: 2, 5, 7, p), 0x3d9a562a) }
        down.withUnsafeBufferPointer { XCTAssertEqual(value(.stacked, $0.baseAddress!, .down, expert: 6, 10, 20, p), 0x3d11c27c) }
    }

    /// peft's fused expert LoRA: per-expert A [r, in] and B [out, r] set into the fused A
    /// (E, r, in) and B (out, r, E) read back bit for bit; B's expert index is fastest.
    func testFusedLoRARoundTrips() {
        let lora = ExpertLayout.FusedLoRA(experts: 3, rank: 2, inFeatures: 5, outFeatures: 4)
        var a = [Float](repeating: .nan, count: 3 * 2 * 5), b = [Float](repeating: .nan, count: 4 * 2 * 3)
        var pieces: [([Float], [Float])] = []
        for x in 0..<3 {
            let pa: [Float] = (0..<10).map { Float(x * 100 + $0) }
            let pb: [Float] = (0..<8).map { Float(-x * 100 - $0) - 0.5 }
            pieces.append((pa, pb))
        }
        for (x, p) in pieces.enumerated() { lora.set(x, a: p.0, b: p.1, into: &a, &b) }
        XCTAssertFalse(a.contains { $0.isNaN } || b.contains { $0.isNaN })
        for (x, p) in pieces.enumerated() {
            let back = lora.expert(x, a: a, b: b)
            XCTAssertEqual(back.a.map { $0.bitPattern }, p.0.map { $0.bitPattern })
            XCTAssertEqual(back.b.map { $0.bitPattern }, p.1.map { $0.bitPattern })
        }
        // B[o = 1, j = 0] of expert 2 at (1 * 2 + 0) * 3 + 2.
        XCTAssertEqual(b[8], pieces[2].1[1 * 2 + 0])
        XCTAssertEqual(ExpertLayout.transformers5(.gptOss), .transposedInterleaved)
        XCTAssertEqual(ExpertLayout.transformers5(.mixtral), .fused)
        XCTAssertTrue(ExpertLayout.isTransposedInterleaved(.gptOss))
        XCTAssertFalse(ExpertLayout.isTransposedInterleaved(.mixtral))
    }
}
