import CKernels
import Foundation
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport
import XCTest

/// Every MOE_TUNE_* switch is checked the same way (EnvironmentSwitches, applied by the one
/// builder of RunOptions): a bad value is refused in one line naming the variable, the value and
/// the accepted values, by the checker, the builder and at the command line's start for every
/// subcommand; a good value is accepted and, once the options are installed, acts as that value
/// in the code that owns the switch (checked in a fresh process, since the owners keep what they
/// read on first use); an unknown MOE_TUNE_* variable gets a one-line warning naming the closest switch.
final class EnvironmentSwitchTests: XCTestCase {
    static let avx512 = BLAS.cpuSupportsSkylakeXKernels()

    /// Good values and what the owner reads from each (the probe's rendering, below).
    static let good: [String: [(value: String, read: String)]] = {
        var g: [String: [(String, String)]] = [
            "MOE_TUNE_THREADS": [("1", "1"), ("3", "3"), ("1024", "1024")],
            "MOE_TUNE_BLAS_THREADING": [("split", "split"), ("library", "library"), ("LIBRARY", "library")],
            "MOE_TUNE_EXPERT_TASKS": [("0", "false"), ("1", "true")],
            "MOE_TUNE_CHUNK_FLOATS": [("1", "1"), ("65536", "65536"), ("1000000", "1000000")],
            "MOE_TUNE_ATTENTION_BLOCK": [("0", "0"), ("1", "1"), ("64", "64"), ("100000", "100000")],
            "MOE_TUNE_LORA_KERNEL": [("blas", "blas"), ("scalar", "scalar")],
            "MOE_TUNE_HEAD_CHUNKS": [("0", "false"), ("1", "true")],
            "MOE_TUNE_QDOT_ACTIVATION": [("8", "8"), ("16", "16")],
            "MOE_TUNE_MPI_TIMEOUT": [("5", "5.0"), ("0.5", "0.5"), ("86400", "86400.0"), ("1e3", "1000.0")],
        ]
        // The kernel variants this CPU runs (scalar everywhere), read back as their names.
        for (name, k) in [("MOE_TUNE_NF4_KERNEL", CKernelVariants.nf4), ("MOE_TUNE_BF16_KERNEL", .bf16),
                          ("MOE_TUNE_QDOT_KERNEL", .qdot)] {
            g[name] = k.namesHere.map { ($0, $0) }
        }
        // Core types: the core OpenBLAS runs afterwards (lowercased), or for keep that it kept its own.
        g["MOE_TUNE_BLAS_CORETYPE"] = [("keep", "kept"), ("auto", "auto")]
            + BLAS.forcibleCoreTypes.filter(BLAS.cpuRuns).map { ($0.name, $0.name.lowercased()) } + [("haswell", "haswell")].filter { _ in
                BLAS.forcibleCoreTypes.contains { $0.name == "Haswell" && BLAS.cpuRuns($0) }
            }
        return g
    }()

    /// Values each switch's reader does not take.
    static let bad: [String: [String]] = [
        "MOE_TUNE_THREADS": ["abc", "", "0", "1025", "-1", "2 ", "1.5", "99999999999999999999999", "1\n2"],
        "MOE_TUNE_BLAS_THREADING": ["splt", "", "both", "1"],
        "MOE_TUNE_BLAS_CORETYPE": ["Bogus", "", "Cooperlake", "Katmai", "Bulldozer", "Haswell "] + (avx512 ? [] : ["SkylakeX"]),
        "MOE_TUNE_EXPERT_TASKS": ["on", "", "true", "2", "00", "off"],
        "MOE_TUNE_CHUNK_FLOATS": ["1k", "", "0", "-5", "abc", "99999999999999999999999"],
        "MOE_TUNE_ATTENTION_BLOCK": ["abc", "", "-8", "1.5"],
        "MOE_TUNE_LORA_KERNEL": ["foo", "", "SCALAR", "avx2"],
        "MOE_TUNE_NF4_KERNEL": ["sse", "", "AVX2"] + (mt_nf4_kernel_supported(2) == 1 ? [] : ["avx512"]),
        "MOE_TUNE_BF16_KERNEL": ["sse", "", "AVX2"] + (mt_bf16_kernel_supported(2) == 1 ? [] : ["avx512"]),
        "MOE_TUNE_QDOT_KERNEL": ["avx512", "", "AVX2", "sse"] + (mt_qdot_kernel_supported(1) == 1 ? [] : ["avx2"]),
        "MOE_TUNE_HEAD_CHUNKS": ["off", "", "false", "00"],
        "MOE_TUNE_QDOT_ACTIVATION": ["4", "", "32", "08", "16 "],
        "MOE_TUNE_MPI_TIMEOUT": ["5s", "", "0", "-1", "86401", "abc", "nan", "inf"],
    ]

    func testTheListCoversEverySwitchAndTheTestsCoverTheList() throws {
        let names = EnvironmentSwitches.all.map(\.name)
        XCTAssertEqual(Set(names).count, names.count, "a switch listed twice")
        XCTAssertEqual(Set(Self.good.keys), Set(names))
        XCTAssertEqual(Set(Self.bad.keys), Set(names))
        for (name, values) in Self.good { XCTAssertFalse(values.isEmpty, name) }
        // Every word the checker takes (and every value this CPU runs) is among the good values,
        // so each is compared with what its owner reads.
        for s in EnvironmentSwitches.all {
            let tested = Set(Self.good[s.name]!.map { $0.value.lowercased() })
            var words = s.runnableHere ?? []
            if case .words(let w, _) = s.values { words += w }
            for w in words { XCTAssertTrue(tested.contains(w.lowercased()), "\(s.name)=\(w) accepted but not compared with its owner") }
        }
        // Every MOE_TUNE_* name the sources mention is a listed switch or a known other name.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let pattern = try NSRegularExpression(pattern: "MOE_TUNE_[A-Z0-9_]+")
        var seen = Set<String>()
        let files = FileManager.default.enumerator(atPath: root.appendingPathComponent("Sources").path)!
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") || $0.hasSuffix(".c") || $0.hasSuffix(".h") }
            .map { "Sources/" + $0 } + ["Package.swift"]
        XCTAssertGreaterThan(files.count, 50)
        for f in files {
            let text = try String(contentsOf: root.appendingPathComponent(f), encoding: .utf8)
            for m in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                seen.insert(String(text[Range(m.range, in: text)!]))
            }
        }
        XCTAssertTrue(seen.isSuperset(of: names), "listed but never read: \(Set(names).subtracting(seen))")
        let unlisted = seen.subtracting(names).subtracting(EnvironmentSwitches.otherKnownNames).subtracting(EnvironmentSwitches.removedNames.keys)
        XCTAssertEqual(unlisted, [], "read by the sources but not listed in EnvironmentSwitches.all")
    }

    func testBadValuesAreRefusedInOneLineNamingTheSwitch() throws {
        for s in EnvironmentSwitches.all {
            for v in Self.bad[s.name]! {
                XCTAssertFalse(s.accepts(v), "\(s.name)=\(v)")
                let shown = EnvironmentSwitches.shown(v)
                assertMoETuneError(try EnvironmentSwitches.check(environment: [s.name: v, "MOE_TUNE_THRADS": "1"]),
                                   contains: ["\(s.name)=\(shown): expected \(s.accepted)", "(unset: \(s.defaultValue))"])
            }
        }
        // Where the CPU decides, the message says what this CPU runs.
        assertMoETuneError(try EnvironmentSwitches.check(environment: ["MOE_TUNE_QDOT_KERNEL": "avx512"]),
                           contains: ["; on this CPU: \(CKernelVariants.qdot.namesHere.joined(separator: ", ")) (unset"])
        assertMoETuneError(try EnvironmentSwitches.check(environment: ["MOE_TUNE_BLAS_CORETYPE": "Bogus"]),
                           contains: ["; on this CPU: auto, keep, Prescott"])
        // The one builder of the options refuses each the same way.
        for s in EnvironmentSwitches.all {
            for v in Self.bad[s.name]! {
                do {
                    _ = try runOptions([s.name: v])
                    XCTFail("\(s.name)=\(v) taken")
                } catch let e as MoETuneError {
                    XCTAssertEqual(e, s.refusal(v))
                }
            }
        }
    }

    /// Unset: every option at its default; `--threads` overrides MOE_TUNE_THREADS and is checked.
    func testTheOptionsValueDefaultsAndFlags() throws {
        XCTAssertEqual(try runOptions([:]), RunOptions())
        XCTAssertEqual(try runOptions(["PATH": "/bin", "MOE_TUNE_SLOW_TESTS": "1"]), RunOptions())
        var o = try runOptions(["MOE_TUNE_THREADS": "3", "MOE_TUNE_NF4_KERNEL": "scalar", "MOE_TUNE_LORA_KERNEL": "blas"])
        XCTAssertEqual(o.threads, 3)
        XCTAssertEqual(o.nf4Kernel, .scalar)
        XCTAssertEqual(o.loraKernel, .blas)
        try o.setThreads(5)
        XCTAssertEqual(o.threads, 5)
        assertMoETuneError(try o.setThreads(0), contains: ["--threads must be in 1...1024, got 0"])
        var warnings: [String] = []
        _ = try RunOptions(environment: ["MOE_TUNE_THRADS": "2"], warnings: &warnings)
        XCTAssertEqual(warnings.count, 1)
    }

    /// Each round sets the i-th good value of every switch that has one, checks that the checker
    /// takes them all, then starts this test binary again (testOwnerProbe) under that environment
    /// and compares what each owner read.
    func testGoodValuesAreAcceptedAndReadByTheirOwnersAsThatValue() throws {
        let rounds = Self.good.values.map(\.count).max()!
        var compared = 0
        for i in 0..<rounds {
            var env: [String: String] = [:]
            for (name, values) in Self.good where i < values.count { env[name] = values[i].value }
            XCTAssertEqual(try EnvironmentSwitches.check(environment: env), [], "round \(i)")
            let read = try probe(env)
            for (name, values) in Self.good where i < values.count {
                var expected = values[i].read
                if name == "MOE_TUNE_BLAS_CORETYPE", let r = read[name] {
                    // keep: OpenBLAS's own choice stays; auto: SkylakeX on AVX-512, else OpenBLAS's own.
                    let parts = r.split(separator: "|").map(String.init)   // core|switched|before
                    if expected == "kept" { XCTAssertEqual(parts[1], "false", "keep switched: \(r)"); expected = parts[0] }
                    if expected == "auto" { expected = Self.avx512 ? "skylakex" : parts[2] }
                    XCTAssertEqual(parts[0], expected, "\(name)=\(values[i].value): \(r)")
                } else {
                    XCTAssertEqual(read[name], expected, "\(name)=\(values[i].value) read as \(read[name] ?? "nothing")")
                }
                compared += 1
            }
        }
        XCTAssertEqual(compared, Self.good.values.map(\.count).reduce(0, +))
    }

    /// Runs testOwnerProbe in a fresh process of this test binary with `env` added.
    func probe(_ env: [String: String]) throws -> [String: String] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        p.arguments = ["MoETuneTests.EnvironmentSwitchTests/testOwnerProbe"]
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }.merging(["ENVSWITCH_TEST_PROBE": "1"]) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "probe failed under \(env)")
        var read: [String: String] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix("PROBE ") {
            let kv = line.dropFirst(6).split(separator: "=", maxSplits: 1).map(String.init)
            read[kv[0]] = kv.count > 1 ? kv[1] : ""
        }
        XCTAssertEqual(Set(read.keys), Set(EnvironmentSwitches.all.map(\.name)), "probe output")
        return read
    }

    /// Not a test by itself: the fresh process of the test above. Prints what each owner read.
    func testOwnerProbe() throws {
        guard ProcessInfo.processInfo.environment["ENVSWITCH_TEST_PROBE"] == "1" else {
            throw XCTSkip("runs only as the probe of testGoodValuesAreAcceptedAndReadByTheirOwnersAsThatValue")
        }
        // As the command line does: the options built from the environment, installed first.
        var warnings: [String] = []
        try RunOptions(environment: ProcessInfo.processInfo.environment, warnings: &warnings).install()
        let sel = BLAS.ensureInitialized()
        let read: [(String, String)] = [
            ("MOE_TUNE_THREADS", "\(Parallel.workers)"),
            ("MOE_TUNE_BLAS_THREADING", BLAS.threading.rawValue),
            ("MOE_TUNE_BLAS_CORETYPE", "\(sel.core.lowercased())|\(sel.switched)|\(sel.coreBefore.lowercased())"),
            ("MOE_TUNE_EXPERT_TASKS", "\(Parallel.expertTasks)"),
            ("MOE_TUNE_CHUNK_FLOATS", "\(ChunkedMatmul.chunkFloats)"),
            ("MOE_TUNE_ATTENTION_BLOCK", "\(causalBlock)"),
            ("MOE_TUNE_LORA_KERNEL", LoRAGemm.useKernel ? String(cString: mt_lora_kernel()) : "blas"),
            ("MOE_TUNE_NF4_KERNEL", String(cString: mt_nf4_kernel())),
            ("MOE_TUNE_BF16_KERNEL", String(cString: mt_bf16_kernel())),
            ("MOE_TUNE_QDOT_KERNEL", String(cString: mt_qdot_kernel())),
            ("MOE_TUNE_HEAD_CHUNKS", "\(RunOptions.current.headChunks)"),
            ("MOE_TUNE_QDOT_ACTIVATION", "\(RunOptions.current.qdotActivationBits)"),
            ("MOE_TUNE_MPI_TIMEOUT", "\(RunOptions.current.mpiTimeout)"),
        ]
        print(read.map { "PROBE \($0.0)=\($0.1)" }.joined(separator: "\n"))
    }

    /// Through the binary: one bad value per switch, the subcommands in turn (each gets at least
    /// one); exit 1 and one stderr line, the refusal.
    func testTheCommandLineRefusesABadValueForEverySubcommand() throws {
        let commands: [[String]] = [
            ["train", "--config", "/nonexistent.yaml"],
            ["eval", "--model", "/nonexistent", "--data", "/nonexistent.jsonl"],
            ["merge", "--model", "/nonexistent", "--adapter", "/nonexistent-adapter", "--out", "/nonexistent-out"],
            ["export-lora", "--model", "/nonexistent", "--adapter", "/nonexistent-adapter", "--out", "/nonexistent.gguf"],
            ["generate", "--model", "/nonexistent", "--prompt", "hi"],
            ["tokenize", "--model", "/nonexistent", "--data", "/nonexistent.jsonl"],
            ["quantize", "--model", "/nonexistent", "--out", "/nonexistent-out"],
            ["bench-blas"],
            ["bench-train", "--model", "/nonexistent"],
            ["bench-tokenizer", "--tokenizer", "/nonexistent", "--data", "/nonexistent.jsonl"],
        ]
        for (i, s) in EnvironmentSwitches.all.enumerated() {
            let v = Self.bad[s.name]![0]
            let args = commands[i % commands.count]
            let r = try runMoETune(args, environment: [s.name: v])
            XCTAssertEqual(r.status, 1, "\(args[0]) \(s.name)=\(v): \(r.err)")
            XCTAssertEqual(r.err, "moe-tune: error: \(s.refusal(v).description)\n", args[0])
            XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(s.name)=\(v): expected "), r.err)
        }
        XCTAssertGreaterThanOrEqual(EnvironmentSwitches.all.count, commands.count, "every subcommand gets a bad value")
    }

    func testAnUnknownSwitchIsAWarningNamingTheClosestOne() throws {
        for (typo, closest) in [("MOE_TUNE_THRADS", "MOE_TUNE_THREADS"), ("MOE_TUNE_QDOT_KERNL", "MOE_TUNE_QDOT_KERNEL"),
                                ("MOE_TUNE_HEAD_CHUNK", "MOE_TUNE_HEAD_CHUNKS"), ("MOE_TUNE_NF4KERNEL", "MOE_TUNE_NF4_KERNEL"),
                                ("MOE_TUNE_ATTN_BLOCK", "MOE_TUNE_ATTENTION_BLOCK"), ("MOE_TUNE_MPI_TIMEOUTS", "MOE_TUNE_MPI_TIMEOUT"),
                                ("MOE_TUNE_BLAS_THREADS", "MOE_TUNE_BLAS_THREADING")] {
            XCTAssertEqual(try EnvironmentSwitches.check(environment: [typo: "1", "PATH": "/bin"]),
                           ["\(typo) is not a moe-tune switch (closest: \(closest)); ignored"])
        }
        // Names of other tools and this repository's test and fuzz variables: no warning.
        var quiet = ["MOE_TUNE": "x", "OPENBLAS_CORETYPE": "Haswell", "MOE_TUNEX": "1"]
        for n in EnvironmentSwitches.otherKnownNames { quiet[n] = "1" }
        XCTAssertEqual(try EnvironmentSwitches.check(environment: quiet), [])
        // A switch of an earlier version whose code was removed: a warning that says so.
        XCTAssertEqual(try EnvironmentSwitches.check(environment: ["MOE_TUNE_PREPACK": "1"]),
                       ["MOE_TUNE_PREPACK is no longer read (pre-packed frozen weights were removed; docs/benchmarks.md); ignored"])
        // Several: one line each, sorted.
        XCTAssertEqual(try EnvironmentSwitches.check(environment: ["MOE_TUNE_ZZ": "1", "MOE_TUNE_AA": "1"]).count, 2)

        // Through the binary: the run goes on, with one warning line.
        let r = try runMoETune(["bench-blas", "--tokens", "1", "--repeats", "1"], environment: ["MOE_TUNE_THRADS": "2"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err, "moe-tune: warning: MOE_TUNE_THRADS is not a moe-tune switch (closest: MOE_TUNE_THREADS); ignored\n")
        XCTAssertTrue(r.out.contains("overall:"), r.out)
    }
}
