import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Data-parallel training over Open MPI (mpirun on this machine, loopback): N ranks give the
/// single-process run with grad_accum x N, a run resumes on another number of ranks, ranks
/// with different configs are refused, and a rank that dies or hangs ends the others.
/// Skipped when mpirun is not installed (scripts/test.sh installs Open MPI).
final class MPITests: XCTestCase {
    var mpirun: String? {
        ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    func requireMPI() throws -> String {
        guard let m = mpirun else { throw XCTSkip("Open MPI's mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)") }
        guard FileManager.default.isExecutableFile(atPath: moeTuneBinary) else {
            throw MoETuneError.invalid("moe-tune is not built at \(moeTuneBinary)")
        }
        return m
    }

    /// A training config on the Mixtral fixture with dropout and router jitter, so that
    /// masks and noise must follow the micro-batch, not the rank. SGD with momentum by
    /// default: AdamW divides by sqrt(v), which turns the last-bit differences of gradients
    /// summed in another order into larger ones wherever a gradient is near 0.
    func writeConfig(_ dir: String, name: String, gradAccum: Int, steps: Int, out: String, valid: Bool = true,
                     optimizer: String = "{name: sgd, lr: 0.05, momentum: 0.9}") throws -> String {
        var text = ""
        for i in 0..<40 { text += "{\"prompt\": \"Add \(i) and \(i + 3).\", \"completion\": \" \(2 * i + 3)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        try Data(text.split(separator: "\n").prefix(9).joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: dir + "/valid.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: \(dir)/train.jsonl\(valid ? ", valid: \(dir)/valid.jsonl" : "")}
        lora: {rank: 4, dropout: 0.1, targets: [query, value, mlp]}
        moe: {jitter: 0.01}
        optimizer: \(optimizer)
        schedule: {name: constant}
        training: {batch_size: 3, grad_accum: \(gradAccum), max_steps: \(steps), max_seq_len: 32, eval_every: 2, save_every: 2, out_dir: \(out)}
        """
        let path = dir + "/" + name
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Runs `mpirun -np n moe-tune ARGS` (as root too) with stdout/stderr in files.
    func startMPI(_ mpirun: String, ranks: Int, _ args: [String], dir: String, env: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mpirun)
        p.arguments = ["-np", "\(ranks)", "--oversubscribe", "--bind-to", "none", moeTuneBinary] + args
        var e = ProcessInfo.processInfo.environment
        e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        e["OMPI_MCA_btl"] = "self,tcp"
        e["OMPI_MCA_btl_tcp_if_include"] = "lo"
        e["OMPI_MCA_oob_tcp_if_include"] = "lo"
        for (k, v) in env { e[k] = v }
        p.environment = e
        FileManager.default.createFile(atPath: dir + "/mpi.out", contents: nil)
        FileManager.default.createFile(atPath: dir + "/mpi.err", contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: dir + "/mpi.out")
        p.standardError = FileHandle(forWritingAtPath: dir + "/mpi.err")
        try p.run()
        return p
    }

    func output(_ dir: String) -> String {
        ["mpi.out", "mpi.err"].map { (try? String(contentsOfFile: dir + "/" + $0, encoding: .utf8)) ?? "" }.joined(separator: "\n")
    }

    func adapterTensors(_ dir: String) throws -> [String: [Float]] {
        let f = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        var out: [String: [Float]] = [:]
        for name in f.tensors.keys { out[name] = try f.floatArray(name) }
        return out
    }

    func assertSameAdapter(_ a: String, _ b: String, relative tol: Float, file: StaticString = #filePath, line: UInt = #line) throws {
        let x = try adapterTensors(a), y = try adapterTensors(b)
        XCTAssertEqual(Set(x.keys), Set(y.keys), file: file, line: line)
        XCTAssertFalse(x.isEmpty, file: file, line: line)
        for (name, u) in x {
            guard let v = y[name] else { continue }
            // Relative in norm: Adam turns the last-bit differences of a gradient summed in
            // another order into larger ones in the few elements whose gradient is near 0.
            var dd = 0.0, nn = 0.0
            for (p, q) in zip(u, v) { dd += Double(p - q) * Double(p - q); nn += Double(q) * Double(q) }
            let rel = (dd / max(nn, 1e-30)).squareRoot()
            XCTAssertLessThanOrEqual(rel, Double(tol), "\(name): relative difference \(rel)", file: file, line: line)
        }
    }

    func testRanksEqualOneProcessWithGradAccumTimesRanks() throws {
        let mpirun = try requireMPI()
        for ranks in [2, 4] {
            let dir = try makeTempDir(self)
            let single = try writeConfig(dir, name: "single.yaml", gradAccum: ranks, steps: 4, out: dir + "/single")
            let r = try runMoETune(["train", "--config", single])
            XCTAssertEqual(r.status, 0, r.err)
            let multi = try writeConfig(dir, name: "multi.yaml", gradAccum: 1, steps: 4, out: dir + "/multi")
            let p = try startMPI(mpirun, ranks: ranks, ["train", "--config", multi], dir: dir)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, output(dir))
            try assertSameAdapter(dir + "/single", dir + "/multi", relative: 1e-5)
            // AdamW (optimizer state on every rank) to 1e-4.
            let adamSingle = try writeConfig(dir, name: "adam-single.yaml", gradAccum: ranks, steps: 4, out: dir + "/adam-single",
                                             optimizer: "{lr: 0.01}")
            XCTAssertEqual(try runMoETune(["train", "--config", adamSingle]).status, 0)
            let adamMulti = try writeConfig(dir, name: "adam-multi.yaml", gradAccum: 1, steps: 4, out: dir + "/adam-multi",
                                            optimizer: "{lr: 0.01}")
            let pa = try startMPI(mpirun, ranks: ranks, ["train", "--config", adamMulti], dir: dir)
            pa.waitUntilExit()
            XCTAssertEqual(pa.terminationStatus, 0, output(dir))
            try assertSameAdapter(dir + "/adam-single", dir + "/adam-multi", relative: 1e-4)
            // Same validation losses (evaluation split over ranks and reduced), one log.
            let metrics = try String(contentsOfFile: dir + "/multi/metrics.jsonl", encoding: .utf8)
            let reference = try String(contentsOfFile: dir + "/single/metrics.jsonl", encoding: .utf8)
            func losses(_ text: String, _ type: String, _ key: String = "loss") -> [Double] {
                text.split(separator: "\n").compactMap { line in
                    guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          o["type"] as? String == type else { return nil }
                    return o[key] as? Double
                }
            }
            XCTAssertEqual(losses(metrics, "step").count, 4)
            XCTAssertEqual(losses(metrics, "eval").count, losses(reference, "eval").count)
            // Adam hides a gradient scaled by a constant; the logged norms do not.
            for (a, b) in zip(losses(metrics, "eval") + losses(metrics, "step") + losses(metrics, "step", "grad_norm"),
                              losses(reference, "eval") + losses(reference, "step") + losses(reference, "step", "grad_norm")) {
                XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b)), "\(ranks) ranks")
            }
            XCTAssertTrue(metrics.contains("\"allreduce_bytes\""), metrics)
            let config = try String(contentsOfFile: dir + "/multi/config.yaml", encoding: .utf8)
            XCTAssertTrue(config.contains("grad_accum: \(ranks)"), "config.yaml records the one-process equivalent: \(config)")
        }
    }

    func testResumesOnAnotherNumberOfRanks() throws {
        let mpirun = try requireMPI()
        let dir = try makeTempDir(self)
        let whole = try writeConfig(dir, name: "whole.yaml", gradAccum: 2, steps: 4, out: dir + "/whole")
        XCTAssertEqual(try runMoETune(["train", "--config", whole]).status, 0)
        // Two ranks x grad_accum 1 to step 2, one process x grad_accum 2 to step 3, two ranks to step 4.
        let half = try writeConfig(dir, name: "half.yaml", gradAccum: 1, steps: 2, out: dir + "/split")
        let p = try startMPI(mpirun, ranks: 2, ["train", "--config", half], dir: dir)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, output(dir))
        let one = try writeConfig(dir, name: "one.yaml", gradAccum: 2, steps: 3, out: dir + "/split")
        let r = try runMoETune(["train", "--config", one, "--resume"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("resuming from"), r.err)
        let q = try startMPI(mpirun, ranks: 2, ["train", "--config", half, "--set", "training.max_steps=4", "--resume"], dir: dir)
        q.waitUntilExit()
        XCTAssertEqual(q.terminationStatus, 0, output(dir))
        XCTAssertTrue(output(dir).contains("resuming from"), output(dir))
        try assertSameAdapter(dir + "/whole", dir + "/split", relative: 1e-5)
    }

    func testRanksWithDifferentConfigsAreRefused() throws {
        let mpirun = try requireMPI()
        let dir = try makeTempDir(self)
        let a = try writeConfig(dir, name: "a.yaml", gradAccum: 1, steps: 2, out: dir + "/out")
        let p = try startMPI(mpirun, ranks: 1, ["train", "--config", a, ":", "-np", "1", "--oversubscribe", moeTuneBinary,
                                                 "train", "--config", a, "--set", "optimizer.lr=0.02"], dir: dir)
        let start = Date()
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertTrue(output(dir).contains("do not have the same resolved config"), output(dir))
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
    }

    /// The moe-tune processes mpirun started (its children).
    func ranks(of p: Process) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(p.processIdentifier)/task/\(p.processIdentifier)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0) }.filter { pid in
            ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("moe-tune")
        }
    }

    func waitForRanks(_ p: Process, count: Int, dir: String) -> [Int32] {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, p.isRunning {
            let r = ranks(of: p)
            if r.count == count, let m = try? String(contentsOfFile: dir + "/out/metrics.jsonl", encoding: .utf8),
               m.contains("\"type\":\"step\"") { return r }
            usleep(20_000)
        }
        return ranks(of: p)
    }

    func testKilledRankEndsTheRun() throws {
        let mpirun = try requireMPI()
        let dir = try makeTempDir(self)
        let c = try writeConfig(dir, name: "c.yaml", gradAccum: 1, steps: 100_000, out: dir + "/out", valid: false)
        let p = try startMPI(mpirun, ranks: 2, ["train", "--config", c, "--set", "training.log_every=1"], dir: dir)
        let pids = waitForRanks(p, count: 2, dir: dir)
        XCTAssertEqual(pids.count, 2, output(dir))
        guard let victim = pids.last else { p.terminate(); return }
        let start = Date()
        kill(victim, SIGKILL)
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning, Date() < deadline { usleep(50_000) }
        if p.isRunning { p.terminate(); XCTFail("the run went on for 60 s after a rank was killed: \(output(dir))"); return }
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        XCTAssertTrue(output(dir).contains("signal 9"), output(dir))
        // The other rank is gone too (or a zombie about to be reaped).
        func alive(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
            return !(stat.split(separator: ")").last?.trimmingCharacters(in: .whitespaces).hasPrefix("Z") ?? true)
        }
        let gone = Date().addingTimeInterval(20)
        while pids.contains(where: alive), Date() < gone { usleep(50_000) }
        for pid in pids { XCTAssertFalse(alive(pid), "rank \(pid) still runs") }
    }

    func testHungRankEndsTheRunAfterTheTimeout() throws {
        let mpirun = try requireMPI()
        let dir = try makeTempDir(self)
        let c = try writeConfig(dir, name: "c.yaml", gradAccum: 1, steps: 100_000, out: dir + "/out", valid: false)
        let p = try startMPI(mpirun, ranks: 2, ["train", "--config", c, "--set", "training.log_every=1"], dir: dir,
                             env: ["MOE_TUNE_MPI_TIMEOUT": "5"])
        let pids = waitForRanks(p, count: 2, dir: dir)
        XCTAssertEqual(pids.count, 2, output(dir))
        guard let victim = pids.last else { p.terminate(); return }
        kill(victim, SIGSTOP)
        defer { kill(victim, SIGKILL) }
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning, Date() < deadline { usleep(50_000) }
        if p.isRunning { kill(victim, SIGKILL); p.terminate(); XCTFail("the run hung for 60 s: \(output(dir))"); return }
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertTrue(output(dir).contains("no answer from the other ranks"), output(dir))
    }
    /// Runs a command; its exit status and output.
    @discardableResult
    func sh(_ command: String) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command + " 2>&1"]
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { return (127, "\(error)") }
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, out)
    }

    /// Two ranks in two network namespaces joined by a veth pair, so that the gradients
    /// cross a real network interface: mpirun runs in the first namespace and starts the
    /// second rank's daemon through a stand-in for ssh that enters the second namespace.
    /// Needs root (CAP_NET_ADMIN); skipped otherwise.
    func testRanksAcrossANetworkInterface() throws {
        let mpirun = try requireMPI()
        let tag = String(getpid() % 100_000)
        let (nsA, nsB, vA, vB) = ("mt\(tag)a", "mt\(tag)b", "mtv\(tag)a", "mtv\(tag)b")
        guard sh("ip netns add \(nsA)").0 == 0 else { throw XCTSkip("cannot create network namespaces here (needs root and iproute2)") }
        defer { sh("ip netns del \(nsA); ip netns del \(nsB)") }
        let setup = [
            "ip netns add \(nsB)", "ip link add \(vA) type veth peer name \(vB)",
            "ip link set \(vA) netns \(nsA)", "ip link set \(vB) netns \(nsB)",
            "ip -n \(nsA) addr add 10.77.0.1/24 dev \(vA)", "ip -n \(nsB) addr add 10.77.0.2/24 dev \(vB)",
            "ip -n \(nsA) link set \(vA) up", "ip -n \(nsB) link set \(vB) up",
            "ip -n \(nsA) link set lo up", "ip -n \(nsB) link set lo up",
        ]
        for c in setup {
            let (rc, out) = sh(c)
            guard rc == 0 else { throw XCTSkip("network namespace setup failed (\(c)): \(out)") }
        }
        let dir = try makeTempDir(self)
        let agent = dir + "/agent.sh"
        try Data("""
        #!/bin/sh
        host=$1; shift
        case "$host" in 10.77.0.1) ns=\(nsA) ;; 10.77.0.2) ns=\(nsB) ;; *) echo "agent: unknown host $host" >&2; exit 1 ;; esac
        exec ip netns exec "$ns" /bin/sh -c "$*"

        """.utf8).write(to: URL(fileURLWithPath: agent))
        chmod(agent, 0o755)
        func bytes() -> Int {
            let (_, out) = sh("ip netns exec \(nsB) cat /sys/class/net/\(vB)/statistics/rx_bytes /sys/class/net/\(vB)/statistics/tx_bytes")
            return out.split(separator: "\n").compactMap { Int($0) }.reduce(0, +)
        }
        let single = try writeConfig(dir, name: "single.yaml", gradAccum: 2, steps: 4, out: dir + "/single")
        XCTAssertEqual(try runMoETune(["train", "--config", single]).status, 0)
        let multi = try writeConfig(dir, name: "multi.yaml", gradAccum: 1, steps: 4, out: dir + "/multi")
        let before = bytes()
        let env = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
        let (rc, out) = sh("\(env) timeout 120 ip netns exec \(nsA) \(mpirun) --mca plm_rsh_agent \(agent) --mca btl self,tcp "
            + "--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 --bind-to none "
            + "--host 10.77.0.1,10.77.0.2 -np 2 \(moeTuneBinary) train --config \(multi)")
        XCTAssertEqual(rc, 0, out)
        let crossed = bytes() - before
        try assertSameAdapter(dir + "/single", dir + "/multi", relative: 1e-5)
        let metrics = try String(contentsOfFile: dir + "/multi/metrics.jsonl", encoding: .utf8)
        let reduced = metrics.split(separator: "\n").compactMap { line -> Int? in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["allreduce_bytes"] as? Int
        }.reduce(0, +)
        XCTAssertGreaterThan(reduced, 0, metrics)
        XCTAssertGreaterThanOrEqual(crossed, reduced, "the veth pair carried \(crossed) bytes, the ranks reduced \(reduced)")
    }
}
