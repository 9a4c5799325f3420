import Foundation
import MoEFormats
import MoEText

/// Frozen base weights of one decoder layer.
public struct LayerWeights: @unchecked Sendable {
    public var inputNorm: UnsafePointer<Float>      // [H]
    public var postAttentionNorm: UnsafePointer<Float>  // [H]
    public var q: Matrix   // [nH*D, H]
    public var k: Matrix   // [nKV*D, H]; MLA: kv_a_proj_with_mqa [r + rope, H]
    public var v: Matrix   // [nKV*D, H]; MLA: kv_b_proj [nH*(nope + vD), r]
    public var o: Matrix   // [H, nH*D]; MLA: [H, nH*vD]
    /// MLA (DeepSeek-V2): kv_a_layernorm [r]; with q_lora_rank qr, q_a_proj [qr, H] (frozen)
    /// and q_a_layernorm [qr], and q is q_b_proj [nH*D, qr].
    public var kvANorm: UnsafePointer<Float>? = nil
    public var qA: Matrix? = nil
    public var qANorm: UnsafePointer<Float>? = nil
    /// q/k/v biases [nH*D], [nKV*D], [nKV*D] (Qwen2); frozen, always fp32.
    public var qBias: UnsafePointer<Float>? = nil
    public var kBias: UnsafePointer<Float>? = nil
    public var vBias: UnsafePointer<Float>? = nil
    /// GPT-OSS: o_proj's bias [H], the router's bias [E] and the attention sinks [nH]; frozen.
    public var oBias: UnsafePointer<Float>? = nil
    public var routerBias: UnsafePointer<Float>? = nil
    public var sinks: UnsafePointer<Float>? = nil
    /// q/k RMSNorm weights (Qwen3 [D] each; OLMoE [nH*D] and [nKV*D]).
    public var qNorm: UnsafePointer<Float>? = nil
    public var kNorm: UnsafePointer<Float>? = nil
    /// Dense models.
    public var mlp: FeedForwardWeights?
    /// MoE layers: router [E, H] and the experts.
    public var router: Matrix?
    public var experts: [FeedForwardWeights]
    /// Qwen2-MoE: the shared expert (SwiGLU of shared_expert_intermediate_size) and its
    /// gate [1, H]: out += sigmoid(x gate^T) * shared(x).
    public var sharedExpert: FeedForwardWeights? = nil
    public var sharedExpertGate: Matrix? = nil
}

/// A decoder of any supported family (Model/Families/) with its weights, read from a Hugging Face folder.
public final class Transformer: @unchecked Sendable {
    public private(set) var config: ModelConfig
    /// How the MoE blocks run (losses, capacity, noise); set before building states.
    public var moe = MoEOptions()
    public let checkpoint: Checkpoint
    public let embed: Matrix        // [V, H]
    public let finalNorm: UnsafePointer<Float>
    public let lmHead: Matrix       // [V, H]; the embedding when tied
    public let layers: [LayerWeights]
    public let rope: RoPETable

    /// With `quantize`, every linear weight of the decoder layers (attention, MLP, every
    /// expert) is stored NF4, quantized tensor by tensor while loading; embeddings, router,
    /// norms and lm_head stay in full precision. Weights a checkpoint already stores in
    /// bitsandbytes' 4-bit format are read as they are. With `base` bf16 the same linear
    /// weights are held in bf16 instead (GPT-OSS's transposed experts stay fp32).
    public static func load(directory: String, quantize: QuantizationSpec? = nil, base: BaseDType = .fp32) throws -> Transformer {
        try base.check(quantized: quantize != nil)
        return try Transformer(checkpoint: Checkpoint(directory: directory), quantize: quantize, base: base)
    }

    private var blockHead: Matrix?

    /// The LM head as the decoder's fast products read it: from a GGUF whose output (or tied
    /// embedding) is stored in ggml blocks, those blocks (read from the file on first use;
    /// `lmHead` holds it widened to fp32 for training); otherwise `lmHead`.
    package func headForDecoding() throws -> Matrix {
        if let blockHead { return blockHead }
        let c = config, f = c.family
        let name = c.tieWordEmbeddings || !checkpoint.contains(f.lmHead) ? f.embedTokens : f.lmHead
        let head = try checkpoint.gguf?.blockWeight(name, rows: c.vocabSize, cols: c.hiddenSize).map { Matrix(ggml: $0) } ?? lmHead
        blockHead = head
        return head
    }

    /// Whether any weight is stored 4-bit.
    public var isQuantized: Bool { layers.contains { $0.q.isQuantized } }

    public init(checkpoint ck: Checkpoint, quantize: QuantizationSpec? = nil, base: BaseDType = .fp32) throws {
        try base.check(quantized: quantize != nil)
        let c = ck.config
        config = c
        checkpoint = ck
        let h = c.hiddenSize, f = c.family
        embed = try ck.matrix(f.embedTokens, rows: c.vocabSize, cols: h)
        finalNorm = try ck.floats(f.finalNorm, shape: [h])
        if c.tieWordEmbeddings || !ck.contains(f.lmHead) {
            guard c.tieWordEmbeddings else {
                throw MoETuneError.file(path: ck.directory,
                    message: "tensor \(Printable.quoted(f.lmHead)) not found and tie_word_embeddings is false")
            }
            lmHead = embed
        } else {
            lmHead = try ck.matrix(f.lmHead, rows: c.vocabSize, cols: h)
        }
        var layers: [LayerWeights] = []
        for l in 0..<c.numLayers {
            let lin = { (slot: LinearSlot, rows: Int, cols: Int) in
                try ck.linear(f.weight(slot, layer: l), rows: rows, cols: cols, quantize: quantize, base: base)
            }
            // MLA: k and v slots are kv_a_proj_with_mqa and kv_b_proj.
            let kShape = c.mla.map { ($0.kvLoraRank + $0.ropeDim, h) } ?? (c.kvDim, h)
            let vShape = c.mla.map { (c.numHeads * ($0.nopeDim + $0.valueDim), $0.kvLoraRank) } ?? (c.kvDim, h)
            var lw = LayerWeights(
                inputNorm: try ck.floats(f.inputNorm(l), shape: [h]),
                postAttentionNorm: try ck.floats(f.postAttentionNorm(l), shape: [h]),
                q: try lin(.q, c.qDim, c.mla?.qLoraRank ?? h), k: try lin(.k, kShape.0, kShape.1),
                v: try lin(.v, vShape.0, vShape.1), o: try lin(.o, h, c.attentionOutDim),
                mlp: nil, router: nil, experts: [])
            if let m = c.mla { lw.kvANorm = try ck.floats(f.kvANorm(l), shape: [m.kvLoraRank]) }
            if let qr = c.mla?.qLoraRank {
                lw.qA = try ck.linear(f.qAProj(l), rows: qr, cols: h, quantize: quantize, base: base)
                lw.qANorm = try ck.floats(f.qANorm(l), shape: [qr])
            }
            if c.qkvBias {
                lw.qBias = try ck.floats(f.bias(.q, layer: l), shape: [c.qDim])
                lw.kBias = try ck.floats(f.bias(.k, layer: l), shape: [c.kvDim])
                lw.vBias = try ck.floats(f.bias(.v, layer: l), shape: [c.kvDim])
            }
            if c.oBias { lw.oBias = try ck.floats(f.bias(.o, layer: l), shape: [h]) }
            if c.attentionSinks { lw.sinks = try ck.floats(f.sinks(l), shape: [c.numHeads]) }
            if let kind = c.qkNorm {
                lw.qNorm = try ck.floats(f.qNorm(l), shape: [kind == .perHead ? c.headDim : c.qDim])
                lw.kNorm = try ck.floats(f.kNorm(l), shape: [kind == .perHead ? c.headDim : c.kvDim])
            }
            if c.isMoELayer(l) {
                (lw.router, lw.experts) = try Transformer.loadExperts(ck, layer: l, quantize: quantize, base: base)
                if c.routerBias { lw.routerBias = try ck.floats(f.bias(.router, layer: l), shape: [c.numExperts]) }
                let s = c.sharedExpertIntermediateSize
                if s > 0 {
                    lw.sharedExpert = FeedForwardWeights(gate: try lin(.shared(.gate), s, h), up: try lin(.shared(.up), s, h),
                                                         down: try lin(.shared(.down), h, s))
                    if f.moe?.sharedExpertGate != nil {
                        lw.sharedExpertGate = try ck.matrix(f.weight(.sharedGate, layer: l), rows: 1, cols: h)
                    }
                }
            } else {
                let i = c.intermediateSize
                lw.mlp = FeedForwardWeights(gate: try lin(.mlp(.gate), i, h), up: try lin(.mlp(.up), i, h),
                                            down: try lin(.mlp(.down), h, i))
            }
            layers.append(lw)
        }
        self.layers = layers
        rope = RoPETable(headDim: c.mla?.ropeDim ?? c.headDim, theta: c.ropeTheta, maxPositions: max(c.maxPositionEmbeddings, 1),
                         scaling: c.ropeScaling)
    }

    /// Routes each token to k experts instead of the checkpoint's num_experts_per_tok
    /// (e.g. fine-tune a top-2 model with k = 1, as Switch did). Build ForwardStates after.
    public func overrideExpertsPerToken(_ k: Int) throws {
        guard config.isMoE else { throw MoETuneError.invalid("moe.top_k is set but \(config.family.name) models have no experts") }
        guard (1...config.numExperts).contains(k) else {
            throw MoETuneError.invalid("moe.top_k \(k) is out of range: the model has \(config.numExperts) experts")
        }
        if let g = config.expertGroups, k > g.topGroups * (config.numExperts / g.groups) {
            throw MoETuneError.invalid("moe.top_k \(k) is out of range: group-limited routing allows \(g.topGroups) groups of \(config.numExperts / g.groups) experts")
        }
        config.expertsPerToken = k
    }

    /// Router and experts of an MoE layer in the layout its checkpoint holds (ExpertLayout):
    /// per expert, transformers 5's fused tensors, or GPT-OSS's transposed ones.
    private static func loadExperts(_ ck: Checkpoint, layer l: Int, quantize: QuantizationSpec?,
                                    base: BaseDType) throws -> (Matrix, [FeedForwardWeights]) {
        let c = ck.config, h = c.hiddenSize, e = c.numExperts, f = c.family, d = ExpertLayout.Dimensions(c)
        let layout = ExpertLayout.of(f, layer: l, contains: ck.contains)
        guard let fused = layout.tensors(f, layer: l, contains: ck.contains) else {
            let router = try ck.matrix(f.weight(.router, layer: l), rows: e, cols: h)
            let experts = try (0..<e).map { x in
                let lin = { (part: FeedForwardPart) throws -> Matrix in
                    let (rows, cols) = ExpertLayout.matrixShape(part, d)
                    return try ck.linear(f.weight(.expert(x, part), layer: l), rows: rows, cols: cols, quantize: quantize, base: base)
                }
                return FeedForwardWeights(gate: try lin(.gate), up: try lin(.up), down: try lin(.down))
            }
            return (router, experts)
        }
        let router = try ck.matrix(fused.router, rows: e, cols: h)
        guard layout == .transposedInterleaved else {
            return (router, try fusedExperts(ck, gateUp: fused.gateUp, down: fused.down, quantize: quantize, base: base))
        }
        for name in [fused.gateUp, fused.down] { try ck.checkMXFP4Storage(name, module: f.fusedExperts(l)) }
        if let q = quantize { return (router, try quantizedTransposedExperts(ck, fused, quantize: q)) }
        return (router, try transposedExperts(ck, fused))
    }

    /// GPT-OSS's experts for QLoRA: gate_up_proj [E, H, 2I] and down_proj [E, I, H] each
    /// quantized whole as bitsandbytes' quantize_4bit flattens it (blocks of 64 along 2I,
    /// then H, then E); the experts read their slices transposed (TransposedWeight, where
    /// ExpertLayout.transposedInterleaved puts them). Biases stay fp32.
    static func quantizedTransposedExperts(_ ck: Checkpoint, _ t: ExpertLayout.FusedTensors,
                                           quantize q: QuantizationSpec) throws -> [FeedForwardWeights] {
        let c = ck.config, d = ExpertLayout.Dimensions(c), layout = ExpertLayout.transposedInterleaved
        let quant = { (name: String, shape: [Int]) throws -> NF4Weight in
            let (rows, cols) = (shape[0] * shape[1], shape[2])
            // MXFP4 checkpoints: dequantized to a temporary fp32 copy first.
            if let w = try ck.withTemporaryMXFP4Floats(name, shape: shape, {
                NF4Weight.quantize($0, rows: rows, cols: cols, doubleQuant: q.doubleQuant)
            }) { return w }
            return try ck.withTemporaryFloats(name, shape: shape) {
                NF4Weight.quantize($0, rows: rows, cols: cols, doubleQuant: q.doubleQuant)
            }
        }
        let gu = try quant(t.gateUp, layout.shape(gateUp: true, d)), dn = try quant(t.down, layout.shape(gateUp: false, d))
        let guBias = try ck.floats(t.gateUpBias, shape: layout.biasShape(gateUp: true, d))
        let dnBias = try ck.floats(t.downBias, shape: layout.biasShape(gateUp: false, d))
        let i = d.inter, bias = FloatBuffer(count: d.experts * 2 * i, zeroed: false)
        ck.keep(bias)
        let clamped = c.clampedSwiGLU
        return (0..<d.experts).map { x in
            let gb = bias.pointer + x * 2 * i, ub = gb + i
            layout.biasSlice(.gate, expert: x, d).read(guBias, into: gb)
            layout.biasSlice(.up, expert: x, d).read(guBias, into: ub)
            let view = { (part: FeedForwardPart, storage: NF4Weight) -> Matrix in
                let v = layout.slice(part, expert: x, d).transposedView
                return Matrix(transposed: TransposedWeight(storage: storage, rowOffset: v.rowOffset, inFeatures: v.inFeatures,
                                                           stride: v.stride, part: v.part))
            }
            return FeedForwardWeights(gate: view(.gate, gu), up: view(.up, gu), down: view(.down, dn), gateBias: gb, upBias: ub,
                                      downBias: dnBias + layout.biasSlice(.down, expert: x, d).offset, clamped: clamped)
        }
    }

    /// GPT-OSS's experts in fp32: gate_up_proj [E, H, 2I] (x @ W, columns 2i gate and 2i+1
    /// up) and down_proj [E, I, H], each with a bias, read by ExpertLayout.transposedInterleaved
    /// into per-expert gate/up [I, H] and down [H, I]. The released checkpoints store both as
    /// MXFP4 blocks, dequantized here.
    static func transposedExperts(_ ck: Checkpoint, _ t: ExpertLayout.FusedTensors) throws -> [FeedForwardWeights] {
        let c = ck.config, d = ExpertLayout.Dimensions(c), layout = ExpertLayout.transposedInterleaved
        let (guShape, dnShape) = (layout.shape(gateUp: true, d), layout.shape(gateUp: false, d))
        let gu = try ck.mxfp4Floats(t.gateUp, shape: guShape) ?? ck.floats(t.gateUp, shape: guShape)
        let dn = try ck.mxfp4Floats(t.down, shape: dnShape) ?? ck.floats(t.down, shape: dnShape)
        let guBias = try ck.floats(t.gateUpBias, shape: layout.biasShape(gateUp: true, d))
        let dnBias = try ck.floats(t.downBias, shape: layout.biasShape(gateUp: false, d))
        let (i, h) = (d.inter, d.hidden)
        let buf = FloatBuffer(count: d.experts * (3 * i * h + 2 * i), zeroed: false)
        ck.keep(buf)
        let clamped = c.clampedSwiGLU
        return (0..<d.experts).map { x -> FeedForwardWeights in
            let gate = buf.pointer + x * (3 * i * h + 2 * i), up = gate + i * h, down = up + i * h
            let gb = down + h * i, ub = gb + i
            layout.slice(.gate, expert: x, d).read(gu, into: gate)
            layout.slice(.up, expert: x, d).read(gu, into: up)
            layout.slice(.down, expert: x, d).read(dn, into: down)
            layout.biasSlice(.gate, expert: x, d).read(guBias, into: gb)
            layout.biasSlice(.up, expert: x, d).read(guBias, into: ub)
            return FeedForwardWeights(gate: Matrix(gate, rows: i, cols: h), up: Matrix(up, rows: i, cols: h),
                                      down: Matrix(down, rows: h, cols: i), gateBias: gb, upBias: ub,
                                      downBias: dnBias + layout.biasSlice(.down, expert: x, d).offset, clamped: clamped)
        }
    }

    /// The experts of transformers 5's fused tensors gate_up [E, 2I, H] (gate rows, then up)
    /// and down [E, H, I] (ExpertLayout.fused): each expert's gate, up and down a slice, read
    /// as `moe-tune quantize` wrote them (bitsandbytes 4-bit), quantized to NF4 or rounded to
    /// bf16 slice by slice, or fp32.
    static func fusedExperts(_ ck: Checkpoint, gateUp: String, down: String, quantize: QuantizationSpec?,
                             base: BaseDType) throws -> [FeedForwardWeights] {
        let d = ExpertLayout.Dimensions(ck.config), layout = ExpertLayout.fused
        let (i, h) = (d.inter, d.hidden), (guShape, dnShape) = (layout.shape(gateUp: true, d), layout.shape(gateUp: false, d))
        if ck.isBnb4bit(gateUp) || ck.isBnb4bit(down) {
            // Each fused tensor quantized whole, each expert's part a block-aligned slice of it.
            guard (i * h) % NF4Weight.blockSize == 0 else {
                throw MoETuneError.file(path: ck.path(of: gateUp),
                    message: "\(gateUp): 4-bit fused experts need intermediate x hidden (\(i) x \(h)) to be a multiple of 64")
            }
            let gu = try ck.readBnb4bit(gateUp, shape: guShape), dn = try ck.readBnb4bit(down, shape: dnShape)
            return try (0..<d.experts).map { x in
                // A slice of whole rows: its first row is its offset over its row length.
                let part = { (p: FeedForwardPart, w: NF4Weight, name: String) throws -> Matrix in
                    let s = try fusedSlice(p, expert: x, d, of: name, ck)
                    return Matrix(nf4: w.slice(rows: s.offset / s.cols, count: s.rows))
                }
                return FeedForwardWeights(gate: try part(.gate, gu, gateUp), up: try part(.up, gu, gateUp), down: try part(.down, dn, down))
            }
        }
        // One fused tensor at a time: each expert's slice quantized (QLoRA) or rounded to bf16.
        if let q = quantize {
            return try fusedSlices(ck, gateUp: gateUp, down: down) { p, rows, cols in
                Matrix(nf4: NF4Weight.quantize(p, rows: rows, cols: cols, doubleQuant: q.doubleQuant))
            }
        }
        if base.isBF16 {
            return try fusedSlices(ck, gateUp: gateUp, down: down) { p, rows, cols in Matrix(bf16: BF16Weight(rounding: p, rows: rows, cols: cols)) }
        }
        let gu = try ck.floats(gateUp, shape: guShape), dn = try ck.floats(down, shape: dnShape)
        return try (0..<d.experts).map { x in
            let part = { (p: FeedForwardPart, t: UnsafePointer<Float>, name: String) throws -> Matrix in
                let s = try fusedSlice(p, expert: x, d, of: name, ck)
                return Matrix(t + s.offset, rows: s.rows, cols: s.cols)
            }
            return FeedForwardWeights(gate: try part(.gate, gu, gateUp), up: try part(.up, gu, gateUp), down: try part(.down, dn, down))
        }
    }

    /// Expert x's `p` [rows, cols] in the fused tensor `name` (ExpertLayout.fused): the readers
    /// here take its rows x cols values from the tensor's `offset` on, so it must be whole rows
    /// of the tensor seen as [E * rows, cols] (contiguous, from a row's start); one that is
    /// not is refused rather than read as a wrong slice.
    static func fusedSlice(_ p: FeedForwardPart, expert x: Int, _ d: ExpertLayout.Dimensions, of name: String,
                           _ ck: Checkpoint) throws -> ExpertSlice {
        let s = ExpertLayout.fused.slice(p, expert: x, d)
        guard s.isContiguous, s.offset % s.cols == 0 else {
            throw MoETuneError.file(path: ck.path(of: name), message: "\(name): expert \(x)'s \(p) is not whole rows of the fused tensor")
        }
        return s
    }

    /// Each expert's gate, up and down slices of the fused tensors (ExpertLayout.fused) made
    /// into a Matrix by `make(pointer, rows, cols)` (which copies them), reading one fused
    /// tensor at a time into temporary fp32.
    static func fusedSlices(_ ck: Checkpoint, gateUp: String, down: String,
                            _ make: (UnsafePointer<Float>, Int, Int) -> Matrix) throws -> [FeedForwardWeights] {
        let d = ExpertLayout.Dimensions(ck.config), layout = ExpertLayout.fused
        func part(_ p: FeedForwardPart, _ x: Int, _ t: UnsafePointer<Float>, _ name: String) throws -> Matrix {
            let s = try fusedSlice(p, expert: x, d, of: name, ck)
            return make(t + s.offset, s.rows, s.cols)
        }
        let gu = try ck.withTemporaryFloats(gateUp, shape: layout.shape(gateUp: true, d)) { p in
            try (0..<d.experts).map { x in (try part(.gate, x, p, gateUp), try part(.up, x, p, gateUp)) }
        }
        let dn = try ck.withTemporaryFloats(down, shape: layout.shape(gateUp: false, d)) { p in
            try (0..<d.experts).map { x in try part(.down, x, p, down) }
        }
        return (0..<d.experts).map { x in FeedForwardWeights(gate: gu[x].0, up: gu[x].1, down: dn[x]) }
    }
}
