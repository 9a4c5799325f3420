import CKernels
import Foundation
import MoEFormats
import MoEText

/// The run-time options of one moe-tune process: every MOE_TUNE_* switch
/// (EnvironmentSwitches.all, which holds the values each accepts) as one typed field.
/// The command line builds the value once, from the environment (`init(environment:)`) and its
/// flags (`--threads`), installs it before any work (`install()`) and records it with each
/// training run (config.yaml, metrics.jsonl). No other code reads the environment: the layers
/// read the installed value (`RunOptions.current`), the C kernels get their variants through
/// one setter (mt_set_kernels), and the rest is passed down.
public struct RunOptions: Sendable, Equatable {
    /// A variant of a CKernels kernel file, by the name the switches take.
    public enum Kernel: String, Sendable {
        case avx512, avx2, scalar
        /// The C side's number: 2 = AVX-512, 1 = AVX2, 0 = scalar.
        package var level: Int32 { self == .avx512 ? 2 : self == .avx2 ? 1 : 0 }
    }

    /// LoRA's skinny products: `blas` sends them to BLAS.gemm, `scalar` forces the kernel's scalar loop.
    public enum LoRAKernel: String, Sendable { case blas, scalar }

    /// Workers of every parallel region (MOE_TUNE_THREADS, `--threads`); nil: the active cores.
    public var threads: Int?
    /// MOE_TUNE_BLAS_THREADING.
    public var blasThreading: BLAS.Threading = .split
    /// MOE_TUNE_BLAS_CORETYPE as given: `auto`, `keep` or an OpenBLAS core type.
    public var blasCoreType = "auto"
    /// MOE_TUNE_EXPERT_TASKS: MoE experts as tasks of one region (true) or one after another.
    public var expertTasks = true
    /// MOE_TUNE_CHUNK_FLOATS; nil: from the L2 cache (ChunkedMatmul.defaultChunkFloats).
    public var chunkFloats: Int?
    /// MOE_TUNE_ATTENTION_BLOCK: rows per causal block (0: full T x T).
    public var attentionBlock = defaultCausalBlock
    /// MOE_TUNE_LORA_KERNEL; nil: the AVX2 kernel where the CPU has one.
    public var loraKernel: LoRAKernel?
    /// MOE_TUNE_NF4_KERNEL, MOE_TUNE_BF16_KERNEL, MOE_TUNE_QDOT_KERNEL; nil: the best this CPU runs.
    public var nf4Kernel: Kernel?
    public var bf16Kernel: Kernel?
    public var qdotKernel: Kernel?
    /// MOE_TUNE_QDOT_ACTIVATION: the decoder's ggml products against the activation rounded to
    /// 8 bits once (as llama.cpp), or 16: twice, the second pass the first's residual.
    public var qdotActivationBits = 8
    /// MOE_TUNE_HEAD_CHUNKS (bench-train): the LM head and loss by chunks of rows, or whole.
    public var headChunks = true
    /// MOE_TUNE_MPI_TIMEOUT: seconds a collective waits for the other ranks.
    public var mpiTimeout: Double = 300

    /// Every option at its default.
    public init() {}

    /// The options the MOE_TUNE_* variables of `environment` set, the rest at their defaults.
    /// A value a switch does not take is refused (EnvironmentSwitches.check); `warnings` gets one
    /// line for each other MOE_TUNE_* variable.
    public init(environment: [String: String], warnings: inout [String]) throws {
        warnings += try EnvironmentSwitches.check(environment: environment)
        for s in EnvironmentSwitches.all {
            if let v = environment[s.name] { s.apply(&self, v) }
        }
    }

    /// `--threads N`, which overrides MOE_TUNE_THREADS.
    public mutating func setThreads(_ n: Int) throws {
        guard (1...1024).contains(n) else { throw MoETuneError.invalid("--threads must be in 1...1024, got \(n)") }
        threads = n
    }

    /// The options installed for this process (every option at its default until `install()`).
    nonisolated(unsafe) public private(set) static var current = RunOptions()

    /// Makes these the process's options: the worker count, the choices read deep in the layers
    /// and the C kernels' variants. Call once at start-up, before any work (the layers keep what
    /// they read on first use; per-worker scratch is sized by the worker count).
    public func install() {
        RunOptions.current = self
        Parallel.workers = threads ?? Parallel.activeCores
        Parallel.expertTasks = expertTasks
        ChunkedMatmul.chunkFloats = chunkFloats ?? ChunkedMatmul.defaultChunkFloats
        mt_set_kernels(nf4Kernel?.level ?? -1, bf16Kernel?.level ?? -1, qdotKernel?.level ?? -1,
                       loraKernel == .scalar ? 0 : -1)
    }

    /// The installed options as they act (defaults resolved: the worker count, OpenBLAS's core,
    /// the kernel variants running), for config.yaml, metrics.jsonl and bench-train's report.
    public static func effective() -> [(key: String, value: Any)] {
        let o = current
        return [
            ("threads", Parallel.workers), ("blas_threading", BLAS.threading.rawValue),
            ("blas_coretype", o.blasCoreType), ("blas_core", BLAS.ensureInitialized().core),
            ("expert_tasks", Parallel.expertTasks), ("chunk_floats", ChunkedMatmul.chunkFloats),
            ("attention_block", causalBlock),
            ("lora_kernel", LoRAGemm.useKernel ? String(cString: mt_lora_kernel()) : "blas"),
            ("nf4_kernel", String(cString: mt_nf4_kernel())), ("bf16_kernel", String(cString: mt_bf16_kernel())),
            ("qdot_kernel", String(cString: mt_qdot_kernel())), ("qdot_activation_bits", o.qdotActivationBits),
            ("head_chunks", o.headChunks), ("mpi_timeout", o.mpiTimeout),
        ]
    }

    /// Options as `effective()` lists them, as a JSON object.
    public static func json(_ options: [(key: String, value: Any)]) -> [String: Any] {
        Dictionary(options.map { ($0.key, $0.value) }, uniquingKeysWith: { $1 })
    }

    /// Options as `effective()` lists them, as YAML comment lines for the end of a run's
    /// config.yaml: comments, so the config reads, hashes and resumes as without them.
    public static func yamlComment(_ options: [(key: String, value: Any)]) -> String {
        "# run options (environment and flags; not part of the config; --resume does not check them):\n"
            + options.map { "#   \($0.key): \($0.value)\n" }.joined()
    }
}
