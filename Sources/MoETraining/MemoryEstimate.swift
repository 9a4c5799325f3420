import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// An estimate of the activation memory a training step holds, so that a batch that cannot
/// fit is refused with a number before anything large is allocated (instead of dying in the
/// allocator). Counts what ForwardState and BackwardState allocate, buffer by buffer: per
/// layer the activations the backward pass reads (q, k, v, attention output, norms' rstd,
/// routing, the MLP's or every routed expert's gate/up, LoRA inputs) and the layer's input
/// on the residual stream; the buffers all layers share (norm outputs, silu(gate) * up,
/// expert inputs/outputs); one layer's gradients (the backward pass reuses them layer by
/// layer); the attention scratch; the dropout scratch; and the head's logits as ForwardState
/// allocates them: one [chunk, V] buffer when the head runs in row chunks (`headChunkRows`,
/// as the trainer builds its state), the whole [N, V] when nil (a head adapter with dropout);
/// d logits are written over them, so they are counted once. With `recompute`
/// (`training.recompute: layers`) only the residual input is kept per layer, plus one set of
/// layer activations that the backward pass refills. Integer buffers count as floats (4
/// bytes each); the model's weights and the optimizer state are not counted. In Double: no
/// overflow.
public enum MemoryEstimate {
    public static func trainingBytes(config c: ModelConfig, rows: Int, seq: Int, headChunkRows: Int?, recompute: Bool = false,
                                     loraRank: Int = 0, jitter: Bool = false) -> Double {
        let n = Double(rows) * Double(seq), t = Double(seq)
        let r = Double(loraRank), h = Double(c.hiddenSize)
        var kept = 0.0   // per token, over all layers
        if recompute {
            kept = Double(c.numLayers) * h + layerFloats(c, dense: c.hasDenseLayers, moe: c.isMoE, loraRank: loraRank, jitter: jitter) - h
        } else {
            for l in 0..<c.numLayers {
                kept += layerFloats(c, dense: !c.isMoELayer(l), moe: c.isMoELayer(l), loraRank: loraRank, jitter: jitter)
            }
        }
        let perToken = kept + sharedFloats(c, loraRank: loraRank) + gradientFloats(c, loraRank: loraRank)
        let headScratch = headChunkRows != nil && loraRank > 0 ? min(n, Double(max(1, headChunkRows!))) * (h + r) : 0
        // Attention probabilities: [cores, T, T] forward, [cores, 2, T, T] backward.
        let attention = 3 * Double(BLAS.cores) * t * t
        return 4 * (n * perToken + attention + headScratch + Double(max(c.numExperts, 1))
            + logitsFloats(config: c, rows: rows, seq: seq, headChunkRows: headChunkRows))
    }

    /// Floats per token of one layer's LayerActivations (its input on the residual stream
    /// included), a layer with a dense MLP and/or experts: what `recompute` keeps once.
    package static func layerFloats(_ c: ModelConfig, dense: Bool, moe: Bool, loraRank: Int, jitter: Bool) -> Double {
        let h = Double(c.hiddenSize), q = Double(c.qDim), kv = Double(c.kvDim), r = Double(loraRank)
        let k = Double(max(c.expertsPerToken, 1)), e = Double(c.numExperts)
        var f = h + 2 + 2 * q + 2 * kv   // input, rstd1/2, q, attn, k, v
        if c.qkNorm != nil { f += q + kv + Double(c.numHeads + c.numKVHeads) }
        if c.clipQKV != nil { f += q + 2 * kv }
        if let m = c.mla {
            let qLatent: Double = m.qLoraRank.map { 2 * Double($0) + 1 } ?? 0
            f += 2 * Double(m.kvLoraRank) + 1 + qLatent
        }
        if dense { f += 2 * Double(c.intermediateSize) }
        let shared = moe && c.sharedExpertIntermediateSize > 0
        let ffnRows: Double = moe ? k : 1, sharedRows: Double = shared ? 3 : 0
        if loraRank > 0 { f += r * (5 + 3 * ffnRows + sharedRows) }
        if moe {
            // Router logits, noise, its pre-activation, probabilities [E]; lse; top-k weights,
            // experts, slots and assignments (ints); every assignment's gate/up.
            f += 4 * e + 1 + 5 * k + 2 * k * Double(c.expertIntermediateSize)
            if shared { f += 2 * Double(c.sharedExpertIntermediateSize) + h + 1 }
            if jitter { f += 2 * h }
        }
        return f
    }

    /// Floats per token of the buffers every layer shares: ln1, ln2, mid, the last residual,
    /// lnF (+ rstd, loss, ids, targets, positions), silu(gate) * up, the expert inputs and
    /// outputs, MLA's scratch, the head adapter's inputs and the LoRA dropout scratch.
    package static func sharedFloats(_ c: ModelConfig, loraRank: Int) -> Double {
        let h = Double(c.hiddenSize), k = Double(max(c.expertsPerToken, 1))
        var f = 5 * h + 8 + Double(loraRank) + feedForwardFloats(c)
        if c.isMoE { f += 2 * k * h }
        if let m = c.mla { f += Double(m.kvLoraRank + m.ropeDim) + Double(c.numHeads * (m.nopeDim + m.valueDim)) }
        f += Double(max(c.hiddenSize, c.intermediateSize, c.expertIntermediateSize, c.sharedExpertIntermediateSize, c.qDim))
        return f
    }

    /// Floats per token of BackwardState: one layer's gradients, reused by every layer.
    package static func gradientFloats(_ c: ModelConfig, loraRank: Int) -> Double {
        let h = Double(c.hiddenSize), q = Double(c.qDim), kv = Double(c.kvDim)
        let k = Double(max(c.expertsPerToken, 1)), e = Double(c.numExperts)
        var f = 2 * h + 2 * q + 2 * kv + 2 * feedForwardFloats(c) + (c.isMoE ? k : 1) * Double(max(loraRank, 1))
        if c.qkNorm != nil { f += q }
        if c.sharedExpertIntermediateSize > 0 { f += h + 1 }
        if c.isMoE { f += 2 * k + 2 * e }
        if c.residualMultiplier != 1 { f += h }
        if let m = c.mla {
            f += Double(c.numHeads * (m.nopeDim + m.valueDim)) + 2 * Double(m.kvLoraRank) + Double(m.ropeDim)
                + 2 * Double(m.qLoraRank ?? 0)
        }
        return f
    }

    /// Floats per token of the largest SwiGLU scratch (ModelConfig.feedForwardScratch).
    static func feedForwardFloats(_ c: ModelConfig) -> Double { Double(c.feedForwardScratch(tokens: 1)) }

    /// Floats of the logits buffer of a ForwardState for [rows, seq] with `headChunkRows`
    /// (ForwardState.logitsRows x V, in Double).
    package static func logitsFloats(config c: ModelConfig, rows: Int, seq: Int, headChunkRows: Int?) -> Double {
        let n = Double(rows) * Double(seq)
        let chunk = headChunkRows.map { min(n, Double(max(1, $0))) } ?? n
        return chunk * Double(c.vocabSize)
    }

    /// What a step's activations must fit in, each with the words that name it: the machine's
    /// memory less the anonymous memory this process already holds (the loaded model's fp32
    /// parts: embedding, norms, a copied base; a GGUF base's mapped file pages are page cache,
    /// which the kernel reclaims rather than kill for), and what is left under each of the
    /// process's limits less `processMargin`.
    public static func activationRoom(proc: String = "/proc/self") -> [(what: String, left: Double)] {
        let held = statusBytes("RssAnon", proc: proc) ?? 0
        return [physicalBytes.map { ("left of this machine's \(format($0)) beside the \(format(held)) this process already holds", $0 - held) }]
            .compactMap { $0 } + processLimits(proc: proc).map { ("left under " + $0.what, $0.left - processMargin) }
    }

    /// A "Key: N kB" line of PROC/status in bytes (nil when absent).
    package static func statusBytes(_ key: String, proc: String = "/proc/self") -> Double? {
        guard let t = try? String(contentsOfFile: proc + "/status", encoding: .utf8) else { return nil }
        for line in t.split(separator: "\n") where line.hasPrefix(key + ":") {
            // "RssAnon:\t  4699568 kB": a tab, then spaces.
            return Double(line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "").map { $0 * 1024 }
        }
        return nil
    }

    /// The refusal of `needed` bytes of activations when one of `room` is smaller, nil when
    /// it fits: "a batch of ... needs about X of activations, more than Y WHAT; lower KEYS",
    /// and, when `recomputed` (the estimate with training.recompute: layers) fits them all,
    /// "or set training.recompute: layers (estimate Z)".
    public static func refusal(batch: String, needed: Double, recomputed: Double?, lower: String,
                               room: [(what: String, left: Double)]) -> String? {
        guard let over = room.first(where: { needed > $0.left }) else { return nil }
        var text = "\(batch) needs about \(format(needed)) of activations, more than \(format(max(over.left, 0))) \(over.what); lower \(lower)"
        if let recomputed, room.allSatisfy({ recomputed <= $0.left }) {
            text += ", or set training.recompute: layers (estimate \(format(recomputed)))"
        }
        return text
    }

    /// The machine's physical memory in bytes (nil if unknown).
    public static var physicalBytes: Double? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? Double(pages) * Double(size) : nil
    }

    /// A limit on this process's memory other than the machine's size, with what is left
    /// under it now.
    public struct Limit: Equatable, Sendable {
        /// Bytes the process may still take under it.
        public var left: Double
        /// "the address-space limit (ulimit -v) of 4.1 GB, 0.9 GB of it in use"
        public var what: String
    }

    /// What the process holds besides a step's activations that a limit also counts and the
    /// estimate does not: the allocator's per-thread arenas, BLAS buffers, thread stacks.
    public static let processMargin = 256e6

    /// RLIMIT_AS (against the mapped size, /proc/self/statm), RLIMIT_DATA (against VmData)
    /// and the cgroup's memory limit (v2 memory.max, v1 memory.limit_in_bytes, against the
    /// usage less reclaimable page cache): the ones that are set, each with what is left.
    /// The loaded model is counted as it is held: a GGUF base's block weights are its
    /// file's read-only private mapping (GGMLWeight.init(mapped:)), file-backed pages that
    /// the address-space limit counts in full (as the mapping did before, beside the copy),
    /// VmData not at all, and the cgroup as page cache (less its inactive part); no limit
    /// counts them as anonymous memory any more.
    /// A batch the machine could hold ended in "Fatal error: out of memory" under them.
    public static func processLimits(proc: String = "/proc/self", cgroupMount: String = "/sys/fs/cgroup",
                                      rlimit: (Int32) -> UInt64? = MemoryEstimate.softLimit) -> [Limit] {
        var out: [Limit] = []
        let page = Double(max(sysconf(Int32(_SC_PAGESIZE)), 1))
        func text(_ path: String) -> String? { (try? String(contentsOfFile: path, encoding: .utf8)) }
        if let limit = rlimit(Int32(RLIMIT_AS.rawValue)) {
            let used = text(proc + "/statm").flatMap { Double($0.split(separator: " ").first ?? "") }.map { $0 * page } ?? 0
            out.append(Limit(left: Double(limit) - used, what: "the address-space limit (ulimit -v) of \(format(Double(limit))), \(format(used)) of it in use"))
        }
        if let limit = rlimit(Int32(RLIMIT_DATA.rawValue)) {
            let used = statusBytes("VmData", proc: proc) ?? 0
            out.append(Limit(left: Double(limit) - used, what: "the data-size limit (ulimit -d) of \(format(Double(limit))), \(format(used)) of it in use"))
        }
        if let (limit, used) = cgroupMemory(proc: proc, mount: cgroupMount) {
            out.append(Limit(left: limit - used, what: "the cgroup memory limit of \(format(limit)), \(format(used)) of it in use"))
        }
        return out
    }

    /// The soft limit of a resource, nil when unlimited.
    public static func softLimit(_ resource: Int32) -> UInt64? {
        var r = rlimit()
        #if os(Linux)
        guard getrlimit(__rlimit_resource_t(UInt32(resource)), &r) == 0 else { return nil }
        #else
        guard getrlimit(resource, &r) == 0 else { return nil }
        #endif
        return r.rlim_cur == rlim_t.max ? nil : UInt64(r.rlim_cur)   // RLIM_INFINITY
    }

    /// (limit, usage less inactive file pages) of this process's memory cgroup, nil without a limit.
    package static func cgroupMemory(proc: String, mount: String) -> (Double, Double)? {
        func number(_ path: String) -> Double? {
            guard let t = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            return Double(t.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        func stat(_ path: String, _ key: String) -> Double {
            guard let t = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
            for line in t.split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.count == 2, f[0] == key { return Double(f[1]) ?? 0 }
            }
            return 0
        }
        let lines = ((try? String(contentsOfFile: proc + "/cgroup", encoding: .utf8)) ?? "").split(separator: "\n")
        // Inside a container the group's path is often the mount's root: try both.
        for line in lines {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            let path = String(f[2])
            if f[0] == "0", f[1].isEmpty {   // cgroup v2
                for dir in [mount + path, mount] {
                    guard let t = try? String(contentsOfFile: dir + "/memory.max", encoding: .utf8) else { continue }
                    guard let limit = Double(t.trimmingCharacters(in: .whitespacesAndNewlines)) else { break }   // "max"
                    let used = (number(dir + "/memory.current") ?? 0) - stat(dir + "/memory.stat", "inactive_file")
                    return (limit, max(used, 0))
                }
            } else if f[1].split(separator: ",").contains("memory") {   // cgroup v1
                for dir in [mount + "/memory" + path, mount + "/memory"] {
                    guard let limit = number(dir + "/memory.limit_in_bytes") else { continue }
                    guard limit < 1e18 else { break }   // no limit: the largest page-aligned value
                    let used = (number(dir + "/memory.usage_in_bytes") ?? 0) - stat(dir + "/memory.stat", "total_inactive_file")
                    return (limit, max(used, 0))
                }
            }
        }
        return nil
    }

    /// "12.3 GB"
    public static func format(_ bytes: Double) -> String {
        String(format: "%.1f GB", bytes / 1e9)
    }
}
