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
        func statusKB(_ key: String) -> Double? {
            guard let t = text(proc + "/status") else { return nil }
            for line in t.split(separator: "\n") where line.hasPrefix(key + ":") {
                return Double(line.dropFirst(key.count + 1).split(separator: " ").first ?? "").map { $0 * 1024 }
            }
            return nil
        }
        if let limit = rlimit(Int32(RLIMIT_AS.rawValue)) {
            let used = text(proc + "/statm").flatMap { Double($0.split(separator: " ").first ?? "") }.map { $0 * page } ?? 0
            out.append(Limit(left: Double(limit) - used, what: "the address-space limit (ulimit -v) of \(format(Double(limit))), \(format(used)) of it in use"))
        }
        if let limit = rlimit(Int32(RLIMIT_DATA.rawValue)) {
            let used = statusKB("VmData") ?? 0
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
