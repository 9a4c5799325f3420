import CKernels
import Foundation
import XCTest

/// The vectorised element-wise kernels against Foundation's exp.
final class KernelTests: XCTestCase {
    func testExpKernelsMatchFoundation() {
        // Softmax-style: values up to 0 after the shift, over a wide range.
        var x = (0..<1003).map { Float($0) * 0.09 - 85 }
        let m = mt_max(x, x.count)
        XCTAssertEqual(m, x.last!)
        let sum = x.withUnsafeBufferPointer { mt_sum_exp_shift($0.baseAddress!, $0.count, m) }
        let total = x.withUnsafeMutableBufferPointer { mt_exp_shift_inplace($0.baseAddress!, $0.count, m) }
        XCTAssertEqual(sum, total)
        var worst: Double = 0, refSum = 0.0
        for i in 0..<1003 {
            // The argument as the kernel forms it: x - shift in fp32.
            let ref = Foundation.exp(Double((Float(i) * 0.09 - 85) - m))
            refSum += ref
            if ref > 1e-37 { worst = max(worst, abs(Double(x[i]) - ref) / ref) }
        }
        print("kernel exp: worst relative error \(worst)")
        XCTAssertLessThan(worst, 3e-7)
        XCTAssertEqual(Double(total), refSum, accuracy: 1e-5 * refSum)
        var nan: [Float] = [.nan, 1]
        XCTAssertTrue(mt_exp_shift_inplace(&nan, 2, 0).isNaN, "NaN must propagate (divergence detection)")
    }

    func testSwiGLUKernelsMatchScalar() {
        let n = 1000
        let g = (0..<n).map { Float($0) * 0.03 - 15 }, u = (0..<n).map { Float($0 % 17) * 0.1 - 0.8 }
        let d = (0..<n).map { Float($0 % 7) * 0.2 - 0.6 }
        var out = [Float](repeating: 0, count: n), dg = d, du = [Float](repeating: 0, count: n)
        mt_swiglu_forward(&out, g, u, n)
        dg.withUnsafeMutableBufferPointer { p in mt_swiglu_backward(p.baseAddress!, &du, p.baseAddress!, g, u, n) }  // dg aliases d
        for i in 0..<n {
            let s = 1 / (1 + Foundation.exp(-Double(g[i])))
            XCTAssertEqual(Double(out[i]), Double(g[i]) * s * Double(u[i]), accuracy: 1e-6)
            XCTAssertEqual(Double(dg[i]), Double(d[i]) * Double(u[i]) * s * (1 + Double(g[i]) * (1 - s)), accuracy: 1e-6)
            XCTAssertEqual(Double(du[i]), Double(d[i]) * Double(g[i]) * s, accuracy: 1e-6)
        }
    }
}
