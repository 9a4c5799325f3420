import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// Measures cblas_sgemm as moe-tune calls it, on the shapes of a transformer layer.
struct BenchBLASCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-blas",
        abstract: "Measure matrix-product GFLOP/s through moe-tune's BLAS entry point.",
        discussion: "Set OPENBLAS_CORETYPE=Haswell to measure without moe-tune's kernel selection.",
        shouldDisplay: false)

    @Option(help: "Rows (tokens) of the activation matrix.")
    var tokens: Int = 1024

    @Option(help: "Repetitions per shape.")
    var repeats: Int = 20

    func run() throws {
        try runReportingErrors {}
        let sel = BLAS.ensureInitialized()
        print("OpenBLAS core: \(sel.core) (chosen at load: \(sel.coreBefore); switched: \(sel.switched); CPU has AVX-512: \(sel.cpuHasAVX512))")
        // y[N, out] = x[N, in] W^T for the projection shapes of bench-small and a 4096 square.
        let shapes = [(512, 512), (1024, 512), (512, 1024), (8000, 512), (4096, 4096)]
        var totalFlops = 0.0, totalTime = 0.0
        for (out, inp) in shapes {
            let x = FloatBuffer(count: tokens * inp), w = FloatBuffer(count: out * inp), y = FloatBuffer(count: tokens * out)
            for i in 0..<x.count { x[i] = Float(i % 7) * 0.01 }
            for i in 0..<w.count { w[i] = Float(i % 5) * 0.01 }
            let reps = out * inp > 10_000_000 ? max(2, repeats / 5) : repeats
            linearForward(y: y.pointer, x: x.pointer, rows: tokens, weight: Matrix(w.pointer, rows: out, cols: inp))
            let t0 = Date()
            for _ in 0..<reps {
                linearForward(y: y.pointer, x: x.pointer, rows: tokens, weight: Matrix(w.pointer, rows: out, cols: inp))
            }
            let dt = Date().timeIntervalSince(t0)
            let flops = 2.0 * Double(tokens) * Double(out) * Double(inp) * Double(reps)
            totalFlops += flops; totalTime += dt
            print(String(format: "[%d x %d] x [%d x %d]^T: %.1f GFLOP/s", tokens, inp, out, inp, flops / dt / 1e9))
        }
        print(String(format: "overall: %.1f GFLOP/s", totalFlops / totalTime / 1e9))
    }
}
