import MoEFormats
import MoEText
/// Weights of one SwiGLU feed-forward: the dense Llama MLP or one Mixtral expert.
/// gate (w1) [I, H], up (w3) [I, H], down (w2) [H, I].
public struct FeedForwardWeights: @unchecked Sendable {
    public var gate: Matrix
    public var up: Matrix
    public var down: Matrix
    /// GPT-OSS experts: biases gate/up [I], down [H] and the clamped SwiGLU; nil: none, silu.
    public var gateBias: UnsafePointer<Float>? = nil
    public var upBias: UnsafePointer<Float>? = nil
    public var downBias: UnsafePointer<Float>? = nil
    public var clamped: ClampedSwiGLU? = nil
}

/// Scratch for the expert computation over the N*k routed assignments.
public struct ExpertBuffers {
    public let xe: FloatBuffer    // [N*k, H] inputs gathered in expert order (shared across layers)
    public let gate: FloatBuffer  // [N*k, I]
    public let up: FloatBuffer    // [N*k, I]
    public let act: FloatBuffer   // [N*k, I] silu(gate) * up (shared across layers)
    public let ye: FloatBuffer    // [N*k, H] expert outputs before the routing weight (shared across layers)

    public init(assignments: Int, hidden: Int, inter: Int, act: FloatBuffer? = nil, xe: FloatBuffer? = nil, ye: FloatBuffer? = nil) {
        self.xe = xe ?? FloatBuffer(count: assignments * hidden)
        gate = FloatBuffer(count: assignments * inter)
        up = FloatBuffer(count: assignments * inter)
        self.act = act ?? FloatBuffer(count: assignments * inter)
        self.ye = ye ?? FloatBuffer(count: assignments * hidden)
    }
}

/// LoRA inputs kept by a feed-forward for its backward pass: u = x A^T of each adapted
/// projection, [rows, r] (rows = tokens, or assignments for experts).
public struct FeedForwardLoRACache {
    public var gate: UnsafeMutablePointer<Float>?
    public var up: UnsafeMutablePointer<Float>?
    public var down: UnsafeMutablePointer<Float>?

    /// The cache for rows starting at `row` (an expert's slice).
    package func offset(row: Int, adapters a: FeedForwardAdapters) -> FeedForwardLoRACache {
        FeedForwardLoRACache(gate: gate.map { $0 + row * (a.gate?.rank ?? 0) },
                             up: up.map { $0 + row * (a.up?.rank ?? 0) },
                             down: down.map { $0 + row * (a.down?.rank ?? 0) })
    }

    package init(gate: UnsafeMutablePointer<Float>? = nil, up: UnsafeMutablePointer<Float>? = nil, down: UnsafeMutablePointer<Float>? = nil) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// Dense SwiGLU MLP (also one expert): out [N, H] (+)= (silu(x Wg^T) * (x Wu^T)) Wd^T,
/// each projection with its LoRA update when adapted.
/// gate/up/act [N, I] are kept for the backward pass.
public func feedForward(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, rows n: Int,
                        weights w: FeedForwardWeights, adapters: FeedForwardAdapters, cache: FeedForwardLoRACache,
                        gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>,
                        act: UnsafeMutablePointer<Float>, accumulate: Bool, path: ProductPath = .exact) {
    linearForward(y: gate, x: x, rows: n, weight: w.gate, path: path)
    if let l = adapters.gate { loraForward(y: gate, x: x, rows: n, adapter: l, u: cache.gate!) }
    linearForward(y: up, x: x, rows: n, weight: w.up, path: path)
    if let l = adapters.up { loraForward(y: up, x: x, rows: n, adapter: l, u: cache.up!) }
    biasForward(y: gate, rows: n, bias: w.gateBias, cols: w.gate.rows)
    biasForward(y: up, rows: n, bias: w.upBias, cols: w.up.rows)
    if let cl = w.clamped {
        cl.forward(out: act, gate: gate, up: up, count: n * w.gate.rows)
    } else {
        swigluForward(out: act, gate: gate, up: up, count: n * w.gate.rows)
    }
    linearForward(y: out, x: act, rows: n, weight: w.down, accumulate: accumulate, path: path)
    if let l = adapters.down { loraForward(y: out, x: act, rows: n, adapter: l, u: cache.down!) }
    biasForward(y: out, rows: n, bias: w.downBias, cols: w.down.rows)
}

/// xe [assignments, H]: the rows of x [N, H] in expert order.
package func gatherExpertInputs(_ xe: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, hidden h: Int, routing r: RoutingBuffers) {
    parallelChunks(r.assignCount, minChunk: 64) { range in
        for a in range {
            (xe + a * h).update(from: x + Int(r.assignToken[a]) * h, count: h)
        }
    }
}

/// Runs body(order, count) with the experts that have tokens, the busiest first: the
/// task order of `Parallel.forEachTask`. The list lives on the stack (nothing allocated).
@inline(__always)
package func withExpertOrder(_ r: RoutingBuffers, _ body: (UnsafePointer<Int32>, Int) -> Void) {
    let experts = r.experts
    withUnsafeTemporaryAllocation(of: Int32.self, capacity: max(experts, 1)) { buf in
        let order = buf.baseAddress!
        var count = 0
        // Insertion sort by descending token count (E is at most a few hundred); ties keep
        // the lower index first.
        for e in 0..<experts where r.count(of: e) > 0 {
            let c = r.count(of: e)
            var i = count
            while i > 0 && r.count(of: Int(order[i - 1])) < c {
                order[i] = order[i - 1]
                i -= 1
            }
            order[i] = Int32(e)
            count += 1
        }
        body(UnsafePointer(order), count)
    }
}

/// What every expert task of `moeForward` reads: one expert's feed-forward over its rows.
private struct ExpertJob {
    let experts: UnsafePointer<FeedForwardWeights>
    let adapters: UnsafePointer<FeedForwardAdapters>?
    let cache: FeedForwardLoRACache
    let routing: RoutingBuffers
    let scratch: ExpertBuffers
    let hidden: Int
    let path: ProductPath
    /// REAP's statistic per expert [E], when asked for.
    let norms: UnsafeMutablePointer<Double>?

    func run(expert e: Int) {
        let w = experts[e], r = routing, s = scratch, h = hidden
        let start = r.expertStart[e], rows = r.count(of: e)
        let inter = w.gate.rows
        let ad = adapters?[e] ?? FeedForwardAdapters()
        feedForward(out: s.ye.pointer + start * h, x: s.xe.pointer + start * h, rows: rows, weights: w,
                    adapters: ad, cache: cache.offset(row: start, adapters: ad),
                    gate: s.gate.pointer + start * inter, up: s.up.pointer + start * inter,
                    act: s.act.pointer + start * inter, accumulate: false, path: path)
        if let norms { norms[e] = weightedOutputNorms(s.ye.pointer, hidden: h, expert: e, routing: r) }
    }
}

/// REAP's statistic of expert e: the sum over its kept assignments a of (routing weight,
/// without DeepSeek-V2's routed_scaling_factor) x ||ye[a, :]||_2, ye the expert's output
/// rows before the weight [assignments, H].
package func weightedOutputNorms(_ ye: UnsafePointer<Float>, hidden h: Int, expert e: Int, routing r: RoutingBuffers) -> Double {
    var sum = 0.0
    for a in r.expertStart[e]..<r.expertStart[e + 1] {
        let row = ye + a * h
        var sq = 0.0
        for j in 0..<h { sq += Double(row[j]) * Double(row[j]) }
        let weight = Double(r.topWeight[Int(r.assignToken[a]) * r.k + Int(r.assignSlot[a])]) / Double(r.scale)
        sum += weight * sq.squareRoot()
    }
    return sum
}

/// Mixtral sparse MoE block, dropless:
///   out[i, :] += sum over the k experts e chosen for token i of weight(i, e) * FFN_e(x[i, :]).
/// x [N, H]; routing already done (RoutingBuffers); each expert runs one matrix product
/// per projection over its gathered tokens. The experts are tasks of one parallel region
/// (each on one worker, busiest first, products unsplit): with many experts and few tokens
/// each (64 experts, top-8), splitting every small product over the cores costs more than
/// it gains. Each expert writes only its own rows of the scratch and its own adapter.
/// `outputNorms` [E]: each expert's weightedOutputNorms (REAP), when given.
public func moeForward(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, tokens n: Int, hidden h: Int,
                       experts: [FeedForwardWeights], adapters: [FeedForwardAdapters], cache: FeedForwardLoRACache,
                       routing r: RoutingBuffers, scratch s: ExpertBuffers, path: ProductPath = .exact,
                       outputNorms norms: UnsafeMutablePointer<Double>? = nil) {
    let total = r.assignCount
    gatherExpertInputs(s.xe.pointer, x: x, hidden: h, routing: r)
    experts.withUnsafeBufferPointer { w in
        adapters.withUnsafeBufferPointer { a in
            var job = ExpertJob(experts: w.baseAddress!, adapters: a.isEmpty ? nil : a.baseAddress, cache: cache, routing: r,
                                scratch: s, hidden: h, path: path, norms: norms)
            withExpertOrder(r) { order, count in
                withUnsafeMutablePointer(to: &job) { p in
                    Parallel.forEachTask(order, count: count, context: UnsafeMutableRawPointer(p)) { context, e in
                        context!.assumingMemoryBound(to: ExpertJob.self).pointee.run(expert: e)
                    }
                }
            }
        }
    }
    // Scatter-add with the routing weights. Two assignments may share a token, so the
    // workers split the hidden columns, each adding in assignment order. A decoding step's
    // few rows are added on this thread (a region would cost more than it saves).
    if total * h <= 1 << 16 {
        scatterExpertOutputs(out, s.ye.pointer, routing: r, hidden: h, columns: 0..<h)
    } else {
        parallelChunks(h, minChunk: 64) { cols in scatterExpertOutputs(out, s.ye.pointer, routing: r, hidden: h, columns: cols) }
    }
}

/// out[token, cols] += weight * ye[a, cols] for every assignment a, in assignment order.
@inline(__always)
private func scatterExpertOutputs(_ out: UnsafeMutablePointer<Float>, _ ye: UnsafePointer<Float>, routing r: RoutingBuffers,
                                  hidden h: Int, columns cols: Range<Int>) {
    for a in 0..<r.assignCount {
        let token = Int(r.assignToken[a])
        let weight = r.topWeight[token * r.k + Int(r.assignSlot[a])]
        let src = ye + a * h, dst = out + token * h
        for j in cols { dst[j] += weight * src[j] }
    }
}
