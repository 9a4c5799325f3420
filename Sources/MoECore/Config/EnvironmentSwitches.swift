import CKernels
import Foundation
import MoEFormats
import MoEText

/// One MOE_TUNE_* environment variable moe-tune reads: the values it accepts, its default, what
/// it is for, and the field of RunOptions it sets. Only `RunOptions(environment:)` reads these
/// variables, once, at start-up: each value is checked here (a bad one refused in one line,
/// never taken silently as the default) and then applied to its typed field.
/// EnvironmentSwitchTests holds the list and the code together: each good value is accepted here
/// and acts, once installed, as that value; each bad one is refused here and by the command line.
public struct EnvironmentSwitch: Sendable {
    public enum Values: Sendable {
        /// One of these words; `ignoringCase` where the reader lowercases the value.
        case words([String], ignoringCase: Bool)
        /// A whole number (Swift's `Int(String)`, as the readers parse it) in the range.
        case wholeNumber(ClosedRange<Int>)
        /// Seconds (Swift's `Double(String)`), more than 0 and at most the bound.
        case seconds(atMost: Double)
        /// A variant of a CKernels kernel that this CPU runs, by the exact name the C side compares.
        case kernel(CKernelVariants)
        /// `auto`, `keep`, or an OpenBLAS core type this CPU runs (BLAS.forcibleCoreTypes).
        case coreType
    }

    public let name: String
    public let values: Values
    /// The accepted values as a person reads them (error messages, the README table).
    public let accepted: String
    public let defaultValue: String
    public let meaning: String
    /// Sets the option from a value `accepts` takes.
    package let apply: @Sendable (inout RunOptions, String) -> Void

    /// The values this CPU runs, for the CPU-dependent switches (nil for the others).
    public var runnableHere: [String]? {
        switch values {
        case .kernel(let k): return k.namesHere
        case .coreType: return ["auto", "keep"] + BLAS.forcibleCoreTypes.filter { BLAS.cpuRuns($0) }.map(\.name)
        default: return nil
        }
    }

    /// Whether the reader of this switch takes `value` as a value it knows.
    public func accepts(_ value: String) -> Bool {
        switch values {
        case let .words(words, ignoringCase):
            return words.contains(ignoringCase ? value.lowercased() : value)
        case .wholeNumber(let range):
            guard let n = Int(value) else { return false }
            return range.contains(n)
        case .seconds(let bound):
            guard let s = Double(value) else { return false }
            return s > 0 && s <= bound
        case .kernel:
            return runnableHere?.contains(value) ?? false
        case .coreType:
            return runnableHere?.contains { $0.lowercased() == value.lowercased() } ?? false
        }
    }

    /// The one-line refusal of `value`: the variable, the value, what it accepts (and, where it
    /// depends on the CPU, what this CPU runs) and what unset means.
    public func refusal(_ value: String) -> MoETuneError {
        let here = runnableHere.map { "; on this CPU: \($0.joined(separator: ", "))" } ?? ""
        return .invalid("\(name)=\(EnvironmentSwitches.shown(value)): expected \(accepted)\(here) (unset: \(defaultValue))")
    }
}

/// The kernel files of Sources/CKernels whose variant an environment switch picks
/// (dispatch.c mt_choose_kernel: "avx512" = 2, "avx2" = 1, "scalar" = 0, compared exactly; a name
/// the CPU does not run, or any other value, used to be ignored silently).
public enum CKernelVariants: Sendable {
    case nf4, bf16, qdot

    /// The variants the kernel file has, best first.
    package var names: [String] { self == .qdot ? ["avx2", "scalar"] : ["avx512", "avx2", "scalar"] }

    /// The variants this CPU runs (the kernel file's own `supported` test).
    package var namesHere: [String] {
        names.filter { name in
            let level: Int32 = name == "avx512" ? 2 : name == "avx2" ? 1 : 0
            switch self {
            case .nf4: return mt_nf4_kernel_supported(level) == 1
            case .bf16: return mt_bf16_kernel_supported(level) == 1
            case .qdot: return mt_qdot_kernel_supported(level) == 1
            }
        }
    }
}

public enum EnvironmentSwitches {
    /// Every MOE_TUNE_* switch moe-tune reads, in the order the README table lists them.
    public static let all: [EnvironmentSwitch] = [
        .init(name: "MOE_TUNE_THREADS", values: .wholeNumber(1...1024), accepted: "a whole number 1...1024",
              defaultValue: "the active cores",
              meaning: "workers of every parallel region (bench-train --threads overrides it)",
              apply: { $0.threads = Int($1) }),
        .init(name: "MOE_TUNE_BLAS_THREADING", values: .words(["split", "library"], ignoringCase: true),
              accepted: "split or library", defaultValue: "split",
              meaning: "split: moe-tune splits each product over the workers, OpenBLAS single-threaded in each; library: OpenBLAS's own threads (to measure)",
              apply: { $0.blasThreading = BLAS.Threading(rawValue: $1.lowercased()) ?? .split }),
        .init(name: "MOE_TUNE_BLAS_CORETYPE", values: .coreType,
              accepted: "auto, keep or an OpenBLAS core type (\(BLAS.forcibleCoreTypes.map(\.name).joined(separator: ", ")))",
              defaultValue: "auto, SkylakeX on an AVX-512 CPU, else OpenBLAS's own choice",
              meaning: "OpenBLAS's kernels; keep: OpenBLAS's choice at load; a core type forces it (to measure)",
              apply: { $0.blasCoreType = $1 }),
        .init(name: "MOE_TUNE_EXPERT_TASKS", values: .words(["0", "1"], ignoringCase: false),
              accepted: "0 or 1", defaultValue: "1",
              meaning: "1: MoE experts as tasks of one region; 0: one after another, products split (to measure)",
              apply: { $0.expertTasks = $1 == "1" }),
        .init(name: "MOE_TUNE_CHUNK_FLOATS", values: .wholeNumber(1...Int.max), accepted: "a whole number >= 1",
              defaultValue: "half the L2 cache in floats (256Ki when unknown, at most 1Mi)",
              meaning: "floats per chunk of dequantized compressed weight (NF4, ggml, bf16)",
              apply: { $0.chunkFloats = Int($1) }),
        .init(name: "MOE_TUNE_ATTENTION_BLOCK", values: .wholeNumber(0...Int.max),
              accepted: "a whole number of rows >= 0 (0: full T x T products)", defaultValue: "\(defaultCausalBlock)",
              meaning: "rows per causal block of attention",
              apply: { $0.attentionBlock = Int($1) ?? defaultCausalBlock }),
        .init(name: "MOE_TUNE_LORA_KERNEL", values: .words(["blas", "scalar"], ignoringCase: false),
              accepted: "blas or scalar", defaultValue: "the AVX2 kernel where the CPU has one",
              meaning: "LoRA's skinny products: blas sends them to BLAS.gemm, scalar forces the kernel's scalar loop (to measure)",
              apply: { $0.loraKernel = RunOptions.LoRAKernel(rawValue: $1) }),
        .init(name: "MOE_TUNE_NF4_KERNEL", values: .kernel(.nf4), accepted: "avx512, avx2 or scalar",
              defaultValue: "the best this CPU runs", meaning: "NF4 dequantization kernel (to measure)",
              apply: { $0.nf4Kernel = RunOptions.Kernel(rawValue: $1) }),
        .init(name: "MOE_TUNE_BF16_KERNEL", values: .kernel(.bf16), accepted: "avx512, avx2 or scalar",
              defaultValue: "the best this CPU runs", meaning: "bf16 -> fp32 widening kernel (to measure)",
              apply: { $0.bf16Kernel = RunOptions.Kernel(rawValue: $1) }),
        .init(name: "MOE_TUNE_QDOT_KERNEL", values: .kernel(.qdot), accepted: "avx2 or scalar",
              defaultValue: "the best this CPU runs",
              meaning: "the decoder's products of ggml blocks, NF4 and bf16 rows (generate, eval --generate; to measure)",
              apply: { $0.qdotKernel = RunOptions.Kernel(rawValue: $1) }),
        .init(name: "MOE_TUNE_QDOT_ACTIVATION", values: .words(["8", "16"], ignoringCase: false),
              accepted: "8 or 16", defaultValue: "8",
              meaning: "the decoder's ggml products: the activation rounded to 8 bits once, or twice (the second pass its residual: logits within 5e-4 of --exact, about a quarter more CPU)",
              apply: { $0.qdotActivationBits = Int($1) ?? 8 }),
        .init(name: "MOE_TUNE_HEAD_CHUNKS", values: .words(["0", "1"], ignoringCase: false),
              accepted: "0 (whole head) or 1 (chunked)", defaultValue: "1",
              meaning: "bench-train: the LM head and loss by chunks of rows, or whole (to measure)",
              apply: { $0.headChunks = $1 == "1" }),
        .init(name: "MOE_TUNE_MPI_TIMEOUT", values: .seconds(atMost: 86_400),
              accepted: "seconds, more than 0 and at most 86400", defaultValue: "300",
              meaning: "under mpirun: how long a collective waits for the other ranks",
              apply: { $0.mpiTimeout = Double($1) ?? 300 }),
    ]

    /// MOE_TUNE_* names that moe-tune does not read but this repository uses: the tests
    /// (MOE_TUNE_SLOW_TESTS, MOE_TUNE_SMOLLM2_GGUF) and the fuzz build (scripts/fuzz.sh). No
    /// warning for them.
    public static let otherKnownNames: Set<String> = [
        "MOE_TUNE_SLOW_TESTS", "MOE_TUNE_SMOLLM2_GGUF", "MOE_TUNE_FUZZ", "MOE_TUNE_FUZZ_TARGET", "MOE_TUNE_FUZZ_FIXTURES",
    ]

    /// Switches of earlier versions whose code is gone (its measurements are in docs/benchmarks.md):
    /// setting one is a warning saying so, not an error.
    public static let removedNames: [String: String] = [
        "MOE_TUNE_PREPACK": "pre-packed frozen weights were removed",
        "MOE_TUNE_PACKED_KERNEL": "pre-packed frozen weights were removed",
        "MOE_TUNE_GEMM": "the optional GEMM libraries (BLIS, oneDNN) were removed; OpenBLAS multiplies",
    ]

    /// The switch named `name`.
    public static func named(_ name: String) -> EnvironmentSwitch? { all.first { $0.name == name } }

    /// The refusal of `value` for the switch `name` (the readers that check a value themselves
    /// throw this, so every message reads the same).
    package static func refusal(_ name: String, _ value: String) -> MoETuneError {
        named(name)?.refusal(value) ?? .invalid("\(name)=\(shown(value)): not a moe-tune switch")
    }

    /// Refuses the first switch set to a value its reader does not take (in the order of `all`);
    /// returns one warning line for each other MOE_TUNE_* variable, naming the closest switch (not
    /// an error: scripts may set variables of other versions).
    @discardableResult
    public static func check(environment: [String: String]) throws -> [String] {
        for s in all {
            if let v = environment[s.name], !s.accepts(v) { throw s.refusal(v) }
        }
        let known = Set(all.map(\.name)).union(otherKnownNames)
        return environment.keys.filter { $0.hasPrefix("MOE_TUNE_") && !known.contains($0) }.sorted().map { name in
            if let why = removedNames[name] { return "\(name) is no longer read (\(why); docs/benchmarks.md); ignored" }
            return "\(shown(name)) is not a moe-tune switch (closest: \(closest(to: name))); ignored"
        }
    }

    /// The switch whose name is fewest single-character edits from `name` (first in `all` on a tie).
    package static func closest(to name: String) -> String {
        var best = all[0].name, bestDistance = Int.max
        for s in all {
            let d = editDistance(name, s.name)   // MoEFormats/Spelling.swift
            if d < bestDistance { best = s.name; bestDistance = d }
        }
        return best
    }

    /// A value as a message shows it: control characters escaped (the message stays one line),
    /// at most 80 characters.
    package static func shown(_ value: String) -> String {
        var out = ""
        for u in value.unicodeScalars {
            if u.properties.generalCategory == .control { out += "\\u{\(String(u.value, radix: 16))}" } else { out.unicodeScalars.append(u) }
        }
        return out.count > 80 ? String(out.prefix(80)) + "..." : out
    }
}
