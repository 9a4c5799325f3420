import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// A rough upper estimate of the activation memory a training step holds, so that a batch
/// that cannot fit is refused with a number before anything large is allocated (instead of
/// dying in the allocator). Counts the forward state kept for backward (per layer: q, k, v,
/// attention output, the MLP's gate/up for every routed expert, residuals), doubled for the
/// backward pass's gradients of the same shapes, and the head's logits as ForwardState
/// allocates them: one [chunk, V] buffer when the head runs in row chunks
/// (`headChunkRows`, as the trainer builds its state), the whole [N, V] when nil (a head
/// adapter with dropout); d logits are written over them, so they are counted once. In
/// Double: no overflow.
public enum MemoryEstimate {
    public static func trainingBytes(config c: ModelConfig, rows: Int, seq: Int, headChunkRows: Int?) -> Double {
        let n = Double(rows) * Double(seq)
        let k = Double(c.isMoE ? max(c.expertsPerToken, 1) : 1)
        let perLayer = 2 * Double(c.qDim) + 2 * Double(c.kvDim) + 2 * Double(c.intermediateSize) * k + 3 * Double(c.hiddenSize)
        let floats = n * (Double(c.numLayers) * perLayer + 4 * Double(c.hiddenSize))
            + Double(BLAS.cores) * Double(seq) * Double(seq)
        return 4 * (2 * floats + logitsFloats(config: c, rows: rows, seq: seq, headChunkRows: headChunkRows))
    }

    /// Floats of the logits buffer of a ForwardState for [rows, seq] with `headChunkRows`
    /// (ForwardState.logitsRows x V, in Double).
    package static func logitsFloats(config c: ModelConfig, rows: Int, seq: Int, headChunkRows: Int?) -> Double {
        let n = Double(rows) * Double(seq)
        let chunk = headChunkRows.map { min(n, Double(max(1, $0))) } ?? n
        return chunk * Double(c.vocabSize)
    }

    /// The machine's physical memory in bytes (nil if unknown).
    public static var physicalBytes: Double? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? Double(pages) * Double(size) : nil
    }

    /// "12.3 GB"
    public static func format(_ bytes: Double) -> String {
        String(format: "%.1f GB", bytes / 1e9)
    }
}
