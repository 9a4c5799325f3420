import MoEFormats
import MoEText
/// Activations of one decoder layer for a batch of up to N = B*T tokens. Kept per layer
/// when training (the backward pass reads them), shared by all layers in inference and
/// when training with recomputation (ForwardState.recomputesLayers).
public final class LayerActivations {
    public let ln1: FloatBuffer      // [N, H] input_layernorm output (shared; backward recomputes it)
    public let rstd1: FloatBuffer    // [N]
    public let q: FloatBuffer        // [N, nH*D] after RoPE
    public let k: FloatBuffer        // [N, nKV*D] after RoPE
    public let v: FloatBuffer        // [N, nKV*D]
    /// q/k before their RMSNorm [N, nH*D], [N, nKV*D] and its rstd, with q/k norms only.
    public let qRaw: FloatBuffer?, kRaw: FloatBuffer?
    public let qRstd: FloatBuffer?, kRstd: FloatBuffer?
    /// q, k, v before the clip_qkv clamp (OLMoE), for its backward.
    public let qClip: FloatBuffer?, kClip: FloatBuffer?, vClip: FloatBuffer?
    public let attn: FloatBuffer     // [N, nH*D] attention output before o_proj
    public let ln2: FloatBuffer      // [N, H] post_attention_layernorm output (shared; recomputed)
    public let rstd2: FloatBuffer    // [N]
    // Dense MLP (silu(gate) * up is recomputed where backward needs it)
    public let gate: FloatBuffer?    // [N, I]
    public let up: FloatBuffer?      // [N, I]
    // Qwen2-MoE shared expert: gate/up [N, Is], its output [N, H] and sigmoid gate [N]
    public let shared: SharedExpertActivations?
    // MoE
    public let routing: RoutingBuffers?
    public let experts: ExpertBuffers?
    /// LoRA inputs u = x A^T of each adapted projection, [rows, r]; nil without adapters.
    public let lora: LayerLoRACache?
    /// Router jitter: the factors [N, H] and the jittered MoE input [N, H] (nil when off).
    public let jitter: FloatBuffer?
    public let moeInput: FloatBuffer?
    /// DeepSeek-V2's latent attention (Layers/MLA.swift); nil for other families.
    public let mla: MLAActivations?

    /// `dense`/`moe`: which feed-forward this layer's buffers serve (both when one set of
    /// activations serves every layer of a model that mixes them).
    package init(config c: ModelConfig, batch b: Int, seq t: Int, loraRank: Int, jitter useJitter: Bool, shared: SharedActivations,
         dense: Bool, moe: Bool) {
        let n = b * t, h = c.hiddenSize
        jitter = useJitter && moe ? FloatBuffer(count: n * h) : nil
        moeInput = useJitter && moe ? FloatBuffer(count: n * h) : nil
        lora = loraRank > 0 ? LayerLoRACache(tokens: n, ffnRows: moe ? n * c.expertsPerToken : n, rank: loraRank,
                                             shared: moe && c.sharedExpertIntermediateSize > 0) : nil
        ln1 = shared.ln1
        rstd1 = FloatBuffer(count: n)
        mla = c.mla.flatMap { m in shared.mla.map { MLAActivations(tokens: n, shape: m, shared: $0) } }
        q = FloatBuffer(count: n * c.qDim)
        k = FloatBuffer(count: n * c.kvDim)
        v = FloatBuffer(count: n * c.kvDim)
        let qk = c.qkNorm != nil
        qRaw = qk ? FloatBuffer(count: n * c.qDim) : nil
        kRaw = qk ? FloatBuffer(count: n * c.kvDim) : nil
        qRstd = qk ? FloatBuffer(count: c.qkNormShape(tokens: n, heads: c.numHeads).rows) : nil
        kRstd = qk ? FloatBuffer(count: c.qkNormShape(tokens: n, heads: c.numKVHeads).rows) : nil
        let clip = c.clipQKV != nil
        qClip = clip ? FloatBuffer(count: n * c.qDim) : nil
        kClip = clip ? FloatBuffer(count: n * c.kvDim) : nil
        vClip = clip ? FloatBuffer(count: n * c.kvDim) : nil
        attn = FloatBuffer(count: n * c.qDim)
        ln2 = shared.ln2
        rstd2 = FloatBuffer(count: n)
        if moe {
            let r = RoutingBuffers(tokens: n, experts: c.numExperts, k: c.expertsPerToken)
            r.configure(c)
            routing = r
            experts = ExpertBuffers(assignments: n * c.expertsPerToken, hidden: h, inter: c.expertIntermediateSize,
                                    act: shared.act, xe: shared.xe, ye: shared.ye)
            self.shared = c.sharedExpertIntermediateSize > 0
                ? SharedExpertActivations(tokens: n, hidden: h, inter: c.sharedExpertIntermediateSize) : nil
        } else {
            routing = nil; experts = nil; self.shared = nil
        }
        if dense {
            gate = FloatBuffer(count: n * c.intermediateSize)
            up = FloatBuffer(count: n * c.intermediateSize)
        } else {
            gate = nil; up = nil
        }
    }
}

/// Buffers every layer writes and the backward pass recomputes instead of keeping one per
/// layer: the two norm outputs (cheap from the residual stream), the expert inputs (a
/// gather of ln2) and silu(gate) * up; and the expert outputs, which the backward pass does
/// not need (the routing weights' gradient comes from d act and act) and uses for d ye.
package struct SharedActivations {
    package let act: FloatBuffer
    package let ln1: FloatBuffer
    package let ln2: FloatBuffer
    package let xe: FloatBuffer?
    package let ye: FloatBuffer?
    package var mla: MLAScratch? = nil
}

/// Activations of a Qwen2-MoE shared expert, kept for the backward pass.
public final class SharedExpertActivations {
    public let gate: FloatBuffer, up: FloatBuffer   // [N, Is]
    public let out: FloatBuffer                     // [N, H] shared(x) before its gate
    public let gateValue: FloatBuffer               // [N] sigmoid(x w_gate^T)
    package init(tokens n: Int, hidden h: Int, inter: Int) {
        gate = FloatBuffer(count: n * inter); up = FloatBuffer(count: n * inter)
        out = FloatBuffer(count: n * h); gateValue = FloatBuffer(count: n)
    }
}

/// Room for the LoRA inputs of one layer, sized for the largest rank in use.
public final class LayerLoRACache {
    public let q: FloatBuffer, k: FloatBuffer, v: FloatBuffer, o: FloatBuffer, router: FloatBuffer
    public let gate: FloatBuffer, up: FloatBuffer, down: FloatBuffer  // rows: tokens, or assignments for experts
    public let sharedGate: FloatBuffer?, sharedUp: FloatBuffer?, sharedDown: FloatBuffer?  // [N, r]

    package init(tokens n: Int, ffnRows: Int, rank r: Int, shared: Bool = false) {
        q = FloatBuffer(count: n * r); k = FloatBuffer(count: n * r); v = FloatBuffer(count: n * r)
        o = FloatBuffer(count: n * r); router = FloatBuffer(count: n * r)
        gate = FloatBuffer(count: ffnRows * r); up = FloatBuffer(count: ffnRows * r); down = FloatBuffer(count: ffnRows * r)
        sharedGate = shared ? FloatBuffer(count: n * r) : nil
        sharedUp = shared ? FloatBuffer(count: n * r) : nil
        sharedDown = shared ? FloatBuffer(count: n * r) : nil
    }

    package var ffn: FeedForwardLoRACache { FeedForwardLoRACache(gate: gate.pointer, up: up.pointer, down: down.pointer) }
    package var sharedFFN: FeedForwardLoRACache {
        FeedForwardLoRACache(gate: sharedGate?.pointer, up: sharedUp?.pointer, down: sharedDown?.pointer)
    }
}

/// Everything a forward pass writes, allocated once for a capacity of B sequences of up
/// to T tokens and reused for every batch that fits (the hot path allocates nothing).
public final class ForwardState {
    public let batchCapacity: Int
    public let seqCapacity: Int
    /// residual[l] is the input of layer l; residual[L] the output of the last layer.
    /// In inference only two alternate.
    public let residual: [FloatBuffer]  // each [N, H]
    /// The residual after a layer's attention block, [N, H]: one buffer for all layers,
    /// which the backward pass refills from the layer's input and attention output.
    public let mid: FloatBuffer
    /// One set per layer in training; one set shared by all layers in inference and with
    /// `recomputesLayers` (the backward pass refills it layer by layer).
    public let layers: [LayerActivations]
    /// silu(gate) * up of the layer being computed [rows, I], shared by all layers: the
    /// backward pass recomputes it instead of keeping one per layer.
    public let act: FloatBuffer
    /// Per-core attention probabilities [cores, T, T] (not kept: recomputed in backward).
    package let attnScratch: FloatBuffer
    /// [N, H] final norm output; after a chunked training forward its first headRows rows
    /// hold d lnF instead (Model/Head.swift).
    public let lnF: FloatBuffer
    public let rstdF: FloatBuffer       // [N]
    /// [N, V], or [headChunk, V] with a chunked head: one chunk's logits at a time.
    public let logits: FloatBuffer
    /// Rows of the head per chunk (N when whole) and whether it runs in chunks
    /// (`headChunkRows` given: training and evaluation; code that reads logits by position
    /// leaves it off). A chunked training state takes the head's backward in the forward
    /// pass with `headLossScale`, the scale the following backward will get.
    public let headChunk: Int
    public let chunkedHead: Bool
    public var headLossScale: Float?
    /// Per head row (in the head's row order: scoredRows with `scoredOnly`), a factor on the
    /// loss gradient: backward takes d (sum_m headRowScales[m] * lossScale * loss_m). Set
    /// between forward and backward, whole head only (the caller owns the memory); nil: 1.
    package var headRowScales: UnsafePointer<Float>?
    /// The losses' temperature T (GRPO, as TRL's fused head): the whole head's logits are
    /// divided by T before the cross-entropy, and d logits by T after its backward. 1: none.
    package var headTemperature: Float = 1
    /// Whether the last forward pass took the head's backward (chunked, training).
    package var headGradientTaken = false
    /// Chunked training head: d x [chunk, H] and the head adapter's du [chunk, r].
    package let headScratch: (dx: FloatBuffer, du: FloatBuffer)?
    public let losses: FloatBuffer      // [N]
    public let headLoRA: FloatBuffer?   // [N, r] u of the lm_head adapter
    public let ids: UnsafeMutablePointer<Int32>
    public let targets: UnsafeMutablePointer<Int32>
    /// Head and loss only where a prediction is scored (target >= 0): the forward pass
    /// moves those rows of lnF to the front and `logits`/`losses` then hold
    /// `headRows` rows in that order. Training and evaluation set it; code that reads
    /// `logits` by position leaves it off.
    public var scoredOnly = false
    /// Rows of the head's last pass (N, or the scored count with `scoredOnly`), the
    /// position of each (`scoredRows`) and its target (`headTargets`).
    public internal(set) var headRows = 0
    package let scoredRows: UnsafeMutablePointer<Int32>   // [N]
    /// Position (b * T + t) of head row m.
    package func headRowPosition(_ m: Int) -> Int { scoredOnly ? Int(scoredRows[m]) : m }
    package let headTargets: UnsafeMutablePointer<Int32>  // [N]
    /// valid[i]: token i is not padding.
    public let valid: UnsafeMutablePointer<Bool>
    /// [N] position of token i within its example, for packed batches (see TokenBatch).
    package let positionBuffer: UnsafeMutablePointer<Int32>
    /// Whether the last batch was packed (then RoPE and attention read positionBuffer).
    public internal(set) var packed = false
    /// The positions RoPE and attention use: nil for an unpacked batch.
    package var positions: UnsafePointer<Int32>? { packed ? UnsafePointer(positionBuffer) : nil }
    /// MoE auxiliary losses of the last forward pass (0 for dense models): the
    /// load-balancing loss (transformers' load_balancing_loss_func over all layers) and
    /// the router z-loss, both without their coefficients; auxFraction [E] is the share
    /// of assignments per expert over all layers and valid tokens, auxRows their count
    /// (valid tokens x MoE layers), kept for the backward pass.
    public internal(set) var auxLoss = 0.0
    public internal(set) var zLoss = 0.0
    public let auxFraction: FloatBuffer
    public internal(set) var auxRows = 0
    /// Routing statistics of the last forward pass, per layer (nil for dense models).
    public let routing: RoutingStatistics?
    public let keepsAllLayers: Bool
    /// Activation recomputation (`training.recompute: layers`, gradient checkpointing per
    /// decoder layer): a training state that keeps only each layer's input (`residual`) per
    /// layer; the backward pass re-runs each layer's forward into the one shared set of
    /// layer activations before that layer's backward (Model/Backward.swift).
    public let recomputesLayers: Bool
    public let loraRank: Int
    /// Shape of the batch of the last forward pass (read by backward).
    public internal(set) var batch = 0
    public internal(set) var seq = 0

    /// `headChunkRows`: run the head in chunks of that many rows (`defaultHeadChunkRows`);
    /// nil: whole, logits [N, V] readable by position. `recompute` (training only): keep one
    /// set of layer activations, recomputed in backward (`recomputesLayers`).
    public init(config c: ModelConfig, batch b: Int, seq t: Int, training: Bool, loraRank: Int = 0, jitter: Bool = false,
                headChunkRows: Int? = nil, recompute: Bool = false) {
        batchCapacity = b
        seqCapacity = t
        keepsAllLayers = training
        recomputesLayers = training && recompute
        self.loraRank = loraRank
        let n = b * t
        let perLayer = training && !recompute
        let copies = perLayer ? c.numLayers : 1
        let rows = c.isMoE ? n * c.expertsPerToken : n
        act = FloatBuffer(count: c.feedForwardScratch(tokens: n))
        attnScratch = FloatBuffer(count: BLAS.cores * t * t)
        let shared = SharedActivations(act: act, ln1: FloatBuffer(count: n * c.hiddenSize), ln2: FloatBuffer(count: n * c.hiddenSize),
                                       xe: c.isMoE ? FloatBuffer(count: rows * c.hiddenSize) : nil,
                                       ye: c.isMoE ? FloatBuffer(count: rows * c.hiddenSize) : nil,
                                       mla: c.mla.map { MLAScratch(tokens: n, heads: c.numHeads, shape: $0) })
        layers = (0..<copies).map { l in
            LayerActivations(config: c, batch: b, seq: t, loraRank: loraRank, jitter: jitter, shared: shared,
                             dense: perLayer ? !c.isMoELayer(l) : c.hasDenseLayers,
                             moe: perLayer ? c.isMoELayer(l) : c.isMoE)
        }
        residual = (0..<(training ? c.numLayers + 1 : 2)).map { _ in FloatBuffer(count: n * c.hiddenSize) }
        mid = FloatBuffer(count: n * c.hiddenSize)
        lnF = FloatBuffer(count: n * c.hiddenSize)
        rstdF = FloatBuffer(count: n)
        chunkedHead = headChunkRows != nil
        headChunk = Self.logitsRows(tokens: n, headChunkRows: headChunkRows)
        logits = FloatBuffer(count: headChunk * c.vocabSize)
        headScratch = chunkedHead && training && loraRank > 0
            ? (FloatBuffer(count: headChunk * c.hiddenSize), FloatBuffer(count: headChunk * loraRank)) : nil
        losses = FloatBuffer(count: n)
        headLoRA = loraRank > 0 ? FloatBuffer(count: n * loraRank) : nil
        ids = .allocate(capacity: n)
        targets = .allocate(capacity: n)
        valid = .allocate(capacity: n)
        positionBuffer = .allocate(capacity: n)
        scoredRows = .allocate(capacity: n)
        headTargets = .allocate(capacity: n)
        auxFraction = FloatBuffer(count: max(c.numExperts, 1))
        routing = c.isMoE ? RoutingStatistics(layers: c.numLayers, experts: c.numExperts, k: c.expertsPerToken) : nil
    }

    /// Rows of the logits buffer [rows, V] for `tokens` = B x T positions: one chunk, or all
    /// of them with `headChunkRows` nil (MemoryEstimate counts the same).
    package static func logitsRows(tokens n: Int, headChunkRows: Int?) -> Int { min(n, max(1, headChunkRows ?? n)) }

    /// Head rows per chunk for a vocabulary of `vocab`: about 16 MiB of logits (2^22 floats),
    /// at least 64 rows so that the products stay efficient. Each chunk streams the whole head
    /// weight twice (logits, d lnF), so short chunks are slow: on bench-small (V = 8000; 524 rows
    /// instead of 131 at 2^20) the head's products went from 52-57 to 65-73 GFLOP/s, -0.06 s of
    /// thread time a step (~2.5%), for +13 MB peak RSS (README "Speed": the GEMM bound).
    public static func defaultHeadChunkRows(vocab: Int) -> Int { max(64, (1 << 22) / max(vocab, 1)) }

    deinit {
        ids.deallocate()
        targets.deallocate()
        valid.deallocate()
        positionBuffer.deallocate()
        scoredRows.deallocate()
        headTargets.deallocate()
    }

    /// The head's input rows for this pass (see `scoredOnly`): with it, the rows of
    /// lnF [N, H] whose target is >= 0 move to the front in order (row m <- row
    /// scoredRows[m], scoredRows[m] >= m, so in place). Returns the row count.
    package func selectHeadRows(tokens n: Int, hidden h: Int) -> Int {
        guard scoredOnly else {
            headTargets.update(from: targets, count: n)
            headRows = n
            return n
        }
        var m = 0
        for i in 0..<n where targets[i] >= 0 {
            scoredRows[m] = Int32(i)
            headTargets[m] = targets[i]
            if m != i { (lnF.pointer + m * h).update(from: lnF.pointer + i * h, count: h) }
            m += 1
        }
        headRows = m
        return m
    }

    /// Backward of selectHeadRows on a gradient d [N, H] that holds headRows compact rows:
    /// spreads them back to their positions and zeroes the unscored rows, in place
    /// (descending, so no compact row is overwritten before it is read).
    package func expandHeadRows(_ d: UnsafeMutablePointer<Float>, tokens n: Int, hidden h: Int) {
        guard scoredOnly else { return }
        var m = headRows - 1
        for i in stride(from: n - 1, through: 0, by: -1) {
            let row = d + i * h
            if m >= 0 && Int(scoredRows[m]) == i {
                if m != i { row.update(from: d + m * h, count: h) }
                m -= 1
            } else {
                row.update(repeating: 0, count: h)
            }
        }
    }

    package func fits(_ batch: TokenBatch) -> Bool {
        batch.batch * batch.seq <= batchCapacity * seqCapacity && batch.batch <= batchCapacity && batch.seq <= seqCapacity
    }

    package func layer(_ l: Int) -> LayerActivations { layers[keepsAllLayers && !recomputesLayers ? l : 0] }
    package func midBuffer(_ l: Int) -> FloatBuffer { mid }
    package func residualIn(_ l: Int) -> FloatBuffer { residual[keepsAllLayers ? l : l % 2] }
    package func residualOut(_ l: Int) -> FloatBuffer { residual[keepsAllLayers ? l + 1 : (l + 1) % 2] }
}
