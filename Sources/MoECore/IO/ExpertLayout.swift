import Foundation
import MoEFormats
import MoEText

/// The on-disk layouts of a Mixture-of-Experts layer's experts, and the one codec that knows
/// them: which tensors hold expert x's gate, up and down (their names come from the family's
/// MoENames, Families/*.swift), where each expert's [out, in] matrix lies inside a fused or
/// stacked tensor (reading: `slice`, `read`), and how per-expert matrices go back into one
/// (writing: `write`, `add`), gate/up split or interleave and transposes included.
///
/// Layouts, for E experts of width I (expert_intermediate_size) on hidden size H, and the
/// code that reads (R) and writes (W) each. The readers, MergeJob, GGUFExport and the peft
/// adapters take their offsets, shapes and gate/up order from this codec. The pruners and
/// Quantizer do not: ExpertPruner (folders), ExpertPrunerGGUF and Quantizer move whole
/// tensors, or whole outermost rows (`ExpertPruner.selectRows`, experts outermost), by name,
/// and ask the codec at most which tensors are fused (`of`, `tensors`), how many parts one
/// holds (`parts`) and whether the layout is GPT-OSS's (`isTransposedInterleaved`);
/// ExpertPrunerAdapter renames the per-expert adapters PEFTAdapter reads and writes.
/// - perExpert: one tensor per expert and part, "<block>.experts.N.<part>.weight": gate and
///   up [I, H], down [H, I] (Mixtral's w1/w3/w2; Qwen-MoE, OLMoE, DeepSeek-V2's gate_proj /
///   up_proj / down_proj). R: Transformer.loadExperts, Merger.checkBaseExperts, GGUFExport
///   (one by one into the stacked tensors). W, not through the codec: MergeJob (merged as
///   any linear weight), ExpertPruner.fates (renamed or dropped per expert, by the family's
///   names), Quantizer (as any linear weight).
/// - fused: transformers 5's "mlp.experts.gate_up_proj" [E, 2I, H] (rows 0..<I gate, I..<2I
///   up) and "mlp.experts.down_proj" [E, H, I], or the same under the family's own names
///   (Granite's "block_sparse_moe.input_linear" / "output_linear", MoENames.checkpointFused).
///   R: Transformer.fusedExperts / fusedSlices (fp32, bf16, NF4 slices, or the bitsandbytes
///   4-bit that Quantizer writes, each fused tensor quantized whole), Merger.checkBaseExperts.
///   W: MergeJob.addExpertDeltas; Quantizer (each tensor quantized whole, `parts` for its
///   check that every slice fills whole blocks), ExpertPruner (the kept experts' outermost
///   rows of the tensors `tensors` names).
/// - transposedInterleaved: GPT-OSS's "mlp.experts.gate_up_proj" [E, H, 2I] (x @ W: column
///   2o gate row o, 2o + 1 up row o) and "mlp.experts.down_proj" [E, I, H], with biases
///   gate_up_proj_bias [E, 2I] (interleaved alike) and down_proj_bias [E, H], each weight
///   maybe stored as MXFP4 blocks (Checkpoint.mxfp4Floats). R: Transformer.transposedExperts
///   (fp32 copies) and quantizedTransposedExperts (NF4 read through TransposedWeight,
///   `transposedView`), Merger.checkBaseExperts. W: MergeJob.addExpertDeltas (dequantized
///   MXFP4 written as floats). Refused by Quantizer and ExpertPruner (`isTransposedInterleaved`).
/// - stacked: GGUF's "blk.N.ffn_{gate,up,down}_exps.weight" [E, rows, cols], one tensor per
///   part, expert x's matrix the x-th [rows, cols] (Families/GGUFLayout.swift names them).
///   R: GGUFModelFile (a per-expert view of each slice, `stackedByteOffset`). W: GGUFExport
///   (`stackedShape`, `stackedSlice`); ExpertPrunerGGUF keeps the kept experts' outermost
///   rows without the codec.
/// - peft's fused expert LoRA (adapter files, not the base; `FusedLoRA`): A (E, r, in), B
///   (out, r, E), gate_up's B rows in the order `gateUpRow` gives for the family's
///   transformers 5 layout. R: PEFTAdapter.fusedExpertPieces / splitGateUp. W:
///   PEFTAdapter.fusedExpertLoRA.
/// Before this codec each of these readers and writers held its own copy of the offsets,
/// shapes and gate/up order (Transformer, MergeJob, PEFTAdapter.gateUpRow, the readers' and
/// writers' loops, Quantizer, GGUFModelFile, GGUFExport); the names stay in the families.
public enum ExpertLayout: Sendable, Equatable, CaseIterable {
    case perExpert
    case fused
    case transposedInterleaved
    case stacked

    /// Expert count, expert width I and hidden size H: all the codec needs of the shapes.
    public struct Dimensions: Sendable, Equatable {
        public var experts: Int
        public var inter: Int
        public var hidden: Int

        public init(experts: Int, inter: Int, hidden: Int) {
            self.experts = experts; self.inter = inter; self.hidden = hidden
        }

        public init(_ c: ModelConfig) {
            self.init(experts: c.numExperts, inter: c.expertIntermediateSize, hidden: c.hiddenSize)
        }
    }

    /// The router and the two fused expert tensors of one layer (transposedInterleaved:
    /// with their biases, the weight's name + "_bias").
    public struct FusedTensors: Sendable, Equatable {
        public var router: String
        public var gateUp: String
        public var down: String
        public var gateUpBias: String { gateUp + "_bias" }
        public var downBias: String { down + "_bias" }
    }

    /// Whether family f's experts are GPT-OSS's transposedInterleaved ones, in every layer of
    /// every checkpoint: the one place that decides it (`of`, `transformers5`, and Quantizer,
    /// ExpertPruner and MergeJob, which refuse or special-case that layout, ask it).
    public static func isTransposedInterleaved(_ f: ModelFamily) -> Bool { f.moe?.transposedInterleaved == true }

    /// The layout of MoE layer l's experts in a Hugging Face checkpoint holding the tensors
    /// `contains` names: GPT-OSS's family is always transposed; otherwise fused where the
    /// checkpoint has either fused naming, else per expert.
    public static func of(_ f: ModelFamily, layer l: Int, contains: (String) -> Bool) -> ExpertLayout {
        if isTransposedInterleaved(f) { return .transposedInterleaved }
        return f.fusedTensors(l, contains: contains) != nil ? .fused : .perExpert
    }

    /// The router and fused tensors of layer l in this layout (nil: perExpert and stacked,
    /// whose tensors are named per expert, `f.weight(.expert(x, part), layer: l)`).
    public func tensors(_ f: ModelFamily, layer l: Int, contains: (String) -> Bool) -> FusedTensors? {
        switch self {
        case .transposedInterleaved: return FusedTensors(router: f.fusedRouter(l), gateUp: f.fusedGateUp(l), down: f.fusedDown(l))
        case .fused: return f.fusedTensors(l, contains: contains).map { FusedTensors(router: $0.router, gateUp: $0.gateUp, down: $0.down) }
        case .perExpert, .stacked: return nil
        }
    }

    /// The parts a fused tensor holds: gate and up (`gateUp`), or down.
    public static func parts(gateUp: Bool) -> [FeedForwardPart] { gateUp ? [.gate, .up] : [.down] }

    /// An expert's matrix [out, in] of `part`: gate and up [I, H], down [H, I].
    public static func matrixShape(_ part: FeedForwardPart, _ d: Dimensions) -> (rows: Int, cols: Int) {
        part == .down ? (d.hidden, d.inter) : (d.inter, d.hidden)
    }

    /// The shape of the tensor holding `gateUp` (else down) in this layout: fused
    /// [E, 2I, H] / [E, H, I], transposed [E, H, 2I] / [E, I, H]; stacked holds one part
    /// per tensor, [E, I, H] for gate (and up) or [E, H, I]; perExpert an expert's [I, H] / [H, I].
    public func shape(gateUp: Bool, _ d: Dimensions) -> [Int] {
        let (e, i, h) = (d.experts, d.inter, d.hidden)
        switch self {
        case .perExpert: return gateUp ? [i, h] : [h, i]
        case .fused: return gateUp ? [e, 2 * i, h] : [e, h, i]
        case .transposedInterleaved: return gateUp ? [e, h, 2 * i] : [e, i, h]
        case .stacked: return gateUp ? [e, i, h] : [e, h, i]
        }
    }

    /// Whether this layout holds gate and up in one tensor (fused, transposedInterleaved):
    /// the layouts `gateUpRow` applies to.
    public var fusesGateUp: Bool { self == .fused || self == .transposedInterleaved }

    /// Whether this layout's experts have biases (transposedInterleaved): the layout
    /// `biasShape` and `biasSlice` apply to.
    public var hasBiases: Bool { self == .transposedInterleaved }

    /// The row of gate_up's output dimension (2I) that holds row o of `part` (gate or up):
    /// gate rows then up rows, or interleaved (transposedInterleaved: 2o, 2o + 1). A LoRA B
    /// [2I, r] of the fused tensor follows it. Only for a layout that `fusesGateUp`.
    public func gateUpRow(_ part: FeedForwardPart, _ o: Int, inter: Int) -> Int {
        precondition(fusesGateUp, "gateUpRow of \(self), which has no gate_up tensor")
        let half = part == .up ? 1 : 0
        return self == .transposedInterleaved ? 2 * o + half : half * inter + o
    }

    /// Where expert x's `part` [out, in] lies in the tensor that holds it (the fused tensor,
    /// the stacked one, or its own tensor in perExpert).
    public func slice(_ part: FeedForwardPart, expert x: Int, _ d: Dimensions) -> ExpertSlice {
        let (i, h) = (d.inter, d.hidden), (rows, cols) = Self.matrixShape(part, d)
        switch self {
        case .perExpert:
            return ExpertSlice(offset: 0, rows: rows, cols: cols, rowStride: cols, colStride: 1)
        case .stacked:
            return Self.stackedSlice(expert: x, rows: rows, cols: cols)
        case .fused:
            // [E, 2I, H]: gate rows then up rows; [E, H, I].
            let offset = part == .down ? x * h * i : x * 2 * i * h + (part == .up ? i * h : 0)
            return ExpertSlice(offset: offset, rows: rows, cols: cols, rowStride: cols, colStride: 1)
        case .transposedInterleaved:
            // [E, H, 2I]: W[o, k] at (x, k, 2o + half); [E, I, H]: W[o, k] at (x, k, o).
            if part == .down { return ExpertSlice(offset: x * i * h, rows: h, cols: i, rowStride: 1, colStride: h) }
            return ExpertSlice(offset: x * h * 2 * i + (part == .up ? 1 : 0), rows: i, cols: h, rowStride: 2, colStride: 2 * i)
        }
    }

    /// The shape of the bias tensor of gate_up (else down) in transposedInterleaved:
    /// [E, 2I] (interleaved as the weight) / [E, H]. Only for a layout that `hasBiases`.
    public func biasShape(gateUp: Bool, _ d: Dimensions) -> [Int] {
        precondition(hasBiases, "biasShape of \(self), which has no biases")
        return gateUp ? [d.experts, 2 * d.inter] : [d.experts, d.hidden]
    }

    /// Where expert x's bias of `part` [out] lies in the layer's bias tensor (GPT-OSS:
    /// gate_up_proj_bias [E, 2I] interleaved as its weight, down_proj_bias [E, H]), as a
    /// one-column slice. Only for a layout that `hasBiases`.
    public func biasSlice(_ part: FeedForwardPart, expert x: Int, _ d: Dimensions) -> ExpertSlice {
        precondition(hasBiases, "biasSlice of \(self), which has no biases")
        let out = Self.matrixShape(part, d).rows
        if part == .down { return ExpertSlice(offset: x * d.hidden, rows: out, cols: 1, rowStride: 1, colStride: 1) }
        let row = gateUpRow(part, 0, inter: d.inter), step = gateUpRow(part, 1, inter: d.inter) - row
        return ExpertSlice(offset: x * 2 * d.inter + row, rows: out, cols: 1, rowStride: step, colStride: 1)
    }
}

// MARK: - GGUF's stacked experts

extension ExpertLayout {
    /// stacked: the tensor [E, rows, cols] of E experts' matrices [rows, cols].
    public static func stackedShape(experts: Int, matrix: [Int]) -> [Int] { [experts] + matrix }

    /// stacked: whether `shape` holds one matrix per expert, [E, rows, cols].
    public static func isStacked(_ shape: [Int], experts: Int) -> Bool { shape.count == 3 && shape[0] == experts }

    /// stacked: an expert's matrix shape [rows, cols] in a tensor of `shape` [E, rows, cols].
    public static func stackedMatrixShape(_ shape: [Int]) -> [Int] { Array(shape.dropFirst()) }

    /// stacked: expert x's [rows, cols], the x-th matrix of its tensor.
    public static func stackedSlice(expert x: Int, rows: Int, cols: Int) -> ExpertSlice {
        ExpertSlice(offset: x * rows * cols, rows: rows, cols: cols, rowStride: cols, colStride: 1)
    }

    /// stacked: the byte offset of expert x's matrix in its tensor, where each of its `rows`
    /// rows takes `rowBytes` bytes (whole ggml blocks).
    public static func stackedByteOffset(expert x: Int, rows: Int, rowBytes: Int) -> Int { x * rows * rowBytes }
}

/// One expert's matrix W [rows, cols] inside a larger tensor T (flat, row-major):
/// W[o, k] = T[offset + o * rowStride + k * colStride].
public struct ExpertSlice: Sendable, Equatable {
    public var offset: Int
    public var rows: Int
    public var cols: Int
    public var rowStride: Int
    public var colStride: Int

    public init(offset: Int, rows: Int, cols: Int, rowStride: Int, colStride: Int) {
        self.offset = offset; self.rows = rows; self.cols = cols; self.rowStride = rowStride; self.colStride = colStride
    }

    /// W is a contiguous row-major block of T starting at `offset` (T + offset is W itself).
    public var isContiguous: Bool { colStride == 1 && (rowStride == cols || rows == 1) }

    /// The index in T of W[o, k].
    @inline(__always) public func index(_ o: Int, _ k: Int) -> Int { offset + o * rowStride + k * colStride }

    /// w [rows, cols] = W, read from `t`.
    public func read(_ t: UnsafePointer<Float>, into w: UnsafeMutablePointer<Float>) {
        if isContiguous { w.update(from: t + offset, count: rows * cols); return }
        for o in 0..<rows { for k in 0..<cols { w[o * cols + k] = t[index(o, k)] } }
    }

    /// W = w [rows, cols], written into `t`.
    public func write(_ w: UnsafePointer<Float>, into t: UnsafeMutablePointer<Float>) {
        if isContiguous { (t + offset).update(from: w, count: rows * cols); return }
        for o in 0..<rows { for k in 0..<cols { t[index(o, k)] = w[o * cols + k] } }
    }

    /// W += w [rows, cols], in `t`.
    public func add(_ w: UnsafePointer<Float>, into t: UnsafeMutablePointer<Float>) {
        for o in 0..<rows { for k in 0..<cols { t[index(o, k)] += w[o * cols + k] } }
    }

    /// A transposed slice (colStride a row of T [n, colStride], rows every rowStride-th
    /// column) as TransposedWeight reads it: T's first row, W's first column and the step.
    public var transposedView: (rowOffset: Int, inFeatures: Int, stride: Int, part: Int) {
        (offset / colStride, cols, rowStride, offset % colStride)
    }
}

// MARK: - peft's fused expert adapters

extension ExpertLayout {
    /// The layout transformers 5 gives the family's experts, which peft's fused expert
    /// adapters follow (the rows of gate_up's LoRA B): GPT-OSS's transposed one, else fused.
    public static func transformers5(_ f: ModelFamily) -> ExpertLayout {
        isTransposedInterleaved(f) ? .transposedInterleaved : .fused
    }

    /// peft's LoRA of a 3-D expert parameter (ParamWrapper, `target_parameters`), as the
    /// adapter file stores it: A (E, r, in) as [E*r, in], expert-major, and B (out, r, E) as
    /// [out, r*E], expert fastest; `rank` is each expert's r.
    public struct FusedLoRA: Sendable, Equatable {
        public var experts: Int
        public var rank: Int
        public var inFeatures: Int
        public var outFeatures: Int

        public init(experts: Int, rank: Int, inFeatures: Int, outFeatures: Int) {
            self.experts = experts; self.rank = rank; self.inFeatures = inFeatures; self.outFeatures = outFeatures
        }

        /// Expert x's A [r, in] and B [out, r], read from the fused `a` and `b`.
        public func expert(_ x: Int, a: [Float], b: [Float]) -> (a: [Float], b: [Float]) {
            let (r, e) = (rank, experts)
            let ax = Array(a[(x * r * inFeatures)..<((x + 1) * r * inFeatures)])
            var bx = [Float](repeating: 0, count: outFeatures * r)
            for o in 0..<outFeatures { for j in 0..<r { bx[o * r + j] = b[o * r * e + j * e + x] } }
            return (ax, bx)
        }

        /// Writes expert x's A [r, in] and B [out, r] into the fused `a` and `b`.
        public func set(_ x: Int, a ax: UnsafePointer<Float>, b bx: UnsafePointer<Float>, into a: inout [Float], _ b: inout [Float]) {
            let (r, e) = (rank, experts)
            for j in 0..<r {
                for i in 0..<inFeatures { a[(x * r + j) * inFeatures + i] = ax[j * inFeatures + i] }
                for o in 0..<outFeatures { b[o * r * e + j * e + x] = bx[o * r + j] }
            }
        }
    }
}
