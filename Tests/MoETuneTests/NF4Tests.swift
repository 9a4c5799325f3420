import CKernels
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// NF4 quantization against bitsandbytes 0.50 (fixture nf4/quant.safetensors).
final class NF4Tests: XCTestCase {
    func testCodesAndAbsmaxMatchBitsandbytes() throws {
        let f = try SafeTensorsFile(path: Fixtures.dir("nf4") + "/quant.safetensors")
        XCTAssertEqual(try f.floatArray("nf4_code"), NF4Weight.code)
        let map = try f.floatArray("dynamic_map")
        XCTAssertEqual(map.count, 256)
        XCTAssertEqual(NF4Weight.dynamicMap, map, "bitsandbytes' signed dynamic 8-bit map, bit for bit")
        for name in ["q_proj", "down_proj", "odd"] {
            let shape = f.shape("w." + name)
            let w = try f.floatArray("w." + name)
            let q = w.withUnsafeBufferPointer { NF4Weight.quantize($0.baseAddress!, rows: shape[0], cols: shape[1], doubleQuant: false) }
            let codes = try f.intArray("codes." + name).map { UInt8($0) }
            XCTAssertEqual(Array(UnsafeBufferPointer(start: q.packed, count: codes.count)), codes, "\(name): 4-bit codes")
            XCTAssertEqual(Array(UnsafeBufferPointer(start: q.absmax!, count: q.blocks)), try f.floatArray("absmax." + name), "\(name): absmax")
            // Double quantization: the 8-bit absmax reconstructs to bitsandbytes' within 1e-6.
            let dq = w.withUnsafeBufferPointer { NF4Weight.quantize($0.baseAddress!, rows: shape[0], cols: shape[1], doubleQuant: true) }
            let ref = try f.floatArray("dq_absmax." + name)
            var worst: Float = 0
            for b in 0..<dq.blocks { worst = max(worst, abs(dq.blockScale(b) - ref[b])) }
            print("\(name) \(shape): codes identical, double-quantized absmax max |diff| \(worst)")
            XCTAssertLessThanOrEqual(worst, 1e-6)
            // Dequantized rows are code * absmax.
            var out = [Float](repeating: 0, count: w.count)
            out.withUnsafeMutableBufferPointer { q.dequantizeRows(0, shape[0], into: $0.baseAddress!) }
            for i in 0..<w.count {
                let byte = codes[i / 2], nib = i % 2 == 0 ? byte >> 4 : byte & 15
                XCTAssertEqual(out[i], NF4Weight.code[Int(nib)] * q.absmax![i / 64])
            }
            // A row range that starts mid-block.
            var part = [Float](repeating: 0, count: 3 * shape[1])
            part.withUnsafeMutableBufferPointer { q.dequantizeRows(1, 4, into: $0.baseAddress!) }
            XCTAssertEqual(part, Array(out[shape[1]..<(4 * shape[1])]))
        }
    }

    func testNF4ProductsMatchDequantizedDense() throws {
        var rng = SplitMix64(seed: 4)
        let (rows, cols, n) = (300, 130, 7)
        let w = (0..<(rows * cols)).map { _ in (rng.nextFloat() * 2 - 1) * 0.1 }
        let q = w.withUnsafeBufferPointer { NF4Weight.quantize($0.baseAddress!, rows: rows, cols: cols, doubleQuant: true) }
        var dense = [Float](repeating: 0, count: rows * cols)
        dense.withUnsafeMutableBufferPointer { q.dequantizeRows(0, rows, into: $0.baseAddress!) }
        let x = (0..<(n * cols)).map { _ in rng.nextFloat() - 0.5 }
        let dy = (0..<(n * rows)).map { _ in rng.nextFloat() - 0.5 }
        var y1 = [Float](repeating: 0, count: n * rows), y2 = y1
        var dx1 = [Float](repeating: 0, count: n * cols), dx2 = dx1
        dense.withUnsafeBufferPointer { d in
            let m = Matrix(d.baseAddress!, rows: rows, cols: cols)
            linearForward(y: &y1, x: x, rows: n, weight: m)
            linearBackwardInput(dx: &dx1, dy: dy, rows: n, weight: m, accumulate: false)
        }
        ChunkedMatmul.chunkFloats = 1000  // force several chunks
        defer { ChunkedMatmul.chunkFloats = ChunkedMatmul.defaultChunkFloats }
        XCTAssertGreaterThan(rows, ChunkedMatmul.chunkRows(q))
        let m = Matrix(nf4: q)
        linearForward(y: &y2, x: x, rows: n, weight: m)
        linearBackwardInput(dx: &dx2, dy: dy, rows: n, weight: m, accumulate: false)
        for (a, b) in zip(y1, y2) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        for (a, b) in zip(dx1, dx2) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    }
}

/// The vectorised NF4 dequantization kernels (CKernels/nf4.c) against the scalar definition
/// value = code[nibble] * blockScale(block): bit-identical (tolerance 0), for every kernel
/// this CPU runs, with fp32 and double-quantized scales, over ranges that start and end at
/// odd indices and mid-block.
final class NF4KernelTests: XCTestCase {
    func testEveryKernelIsBitIdenticalToTheDefinition() throws {
        var rng = SplitMix64(seed: 12)
        let (rows, cols) = (37, 192)  // 111 blocks: the nested scales span one 256-block
        let w = (0..<(rows * cols)).map { _ in (rng.nextFloat() * 2 - 1) * (rng.nextFloat() < 0.1 ? 3 : 0.05) }
        var ran: [String] = []
        for dq in [false, true] {
            let q = w.withUnsafeBufferPointer { NF4Weight.quantize($0.baseAddress!, rows: rows, cols: cols, doubleQuant: dq) }
            func expected(_ i: Int) -> Float {
                let byte = q.packed[i / 2], nib = i % 2 == 0 ? byte >> 4 : byte & 15
                return NF4Weight.code[Int(nib)] * q.blockScale(i / 64)
            }
            for kernel in 0...2 where mt_nf4_kernel_supported(Int32(kernel)) == 1 {
                if !dq { ran.append(["scalar", "avx2", "avx512"][kernel]) }
                for (lo, hi) in [(0, rows * cols), (1, 200), (63, 64), (64, 79), (5, 6), (131, rows * cols - 3), (0, 15)] {
                    var out = [Float](repeating: .nan, count: hi - lo)
                    let rc = out.withUnsafeMutableBufferPointer { o in
                        NF4Weight.code.withUnsafeBufferPointer { code in
                            q.nestedMap.withUnsafeBufferPointer { map in
                                q.nestedAbsmax.withUnsafeBufferPointer { nested in
                                    mt_nf4_dequant_with(Int32(kernel), o.baseAddress!, q.packed, lo, hi, code.baseAddress,
                                                        q.absmax, q.absmaxCodes, map.baseAddress, nested.baseAddress, q.offset)
                                }
                            }
                        }
                    }
                    XCTAssertEqual(rc, 0)
                    for i in lo..<hi where out[i - lo].bitPattern != expected(i).bitPattern {
                        XCTFail("kernel \(kernel) double-quant \(dq) range \(lo)..<\(hi): value \(i) is \(out[i - lo]), expected \(expected(i))")
                        break
                    }
                }
            }
            // The dispatched kernel, through dequantizeRows.
            var all = [Float](repeating: .nan, count: rows * cols)
            all.withUnsafeMutableBufferPointer { q.dequantizeRows(0, rows, into: $0.baseAddress!) }
            for i in 0..<(rows * cols) where all[i].bitPattern != expected(i).bitPattern {
                XCTFail("dequantizeRows value \(i): \(all[i]) vs \(expected(i))"); break
            }
        }
        print("NF4 kernels compared: \(ran), dispatched: \(String(cString: mt_nf4_kernel()))")
        XCTAssertTrue(ran.contains("scalar"))
    }
}
