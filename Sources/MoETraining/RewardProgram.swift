import Foundation
import MoEFormats

/// A reward program (grpo.rewards type command): one long-running process, fed a JSON line
/// {"prompt", "completion", ...the data line's fields} on stdin for each completion, answering
/// one number a line on stdout. An exit, no answer within the timeout or a line that is not a
/// number is an error naming the reward and the data line (the process is then ended).
package final class RewardProgram {
    let name: String, key: String, configPath: String, command: [String], timeout: Double
    private var process: Process?
    private var input: FileHandle?
    private var outputFD: Int32 = -1
    private var pending: [UInt8] = []

    package init(name: String, key: String, configPath: String, command: [String], timeout: Double) {
        self.name = name; self.key = key; self.configPath = configPath; self.command = command; self.timeout = timeout
    }

    deinit { stop() }

    func fail(_ message: String) -> MoETuneError {
        .config(path: configPath, key: key, message: "reward \"\(name)\" (\(command.joined(separator: " "))): \(message)")
    }

    /// Starts the process (the first time): PATH is searched for a program name without a slash.
    func start() throws {
        guard process == nil else { return }
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = command
        let stdin = Pipe(), stdout = Pipe()
        p.standardInput = stdin
        p.standardOutput = stdout
        do { try p.run() } catch { throw fail("cannot start: \(error.localizedDescription)") }
        process = p
        input = stdin.fileHandleForWriting
        outputFD = stdout.fileHandleForReading.fileDescriptor
    }

    /// Ends the process (stdin closed, then terminated if still running).
    package func stop() {
        try? input?.close()
        if let p = process, p.isRunning { p.terminate() }
        process = nil
        input = nil
    }

    /// The program's number for one JSON line (`line`: the data line, for messages).
    package func score(_ json: String, line: Int, path: String) throws -> Double {
        try start()
        let at = "\(path):\(line)"
        do {
            try input!.write(contentsOf: Data((json + "\n").utf8))
        } catch {
            let status = exitStatus()
            stop()
            throw fail("stopped taking input at the completion of \(at)\(status)")
        }
        guard let answer = try readLine(at: at) else {
            let status = exitStatus()
            stop()
            throw fail("gave no answer for the completion of \(at)\(status)")
        }
        let text = answer.trimmingCharacters(in: .whitespaces)
        guard let v = Double(text), v.isFinite else {
            stop()
            throw fail("answered \"\(String(text.prefix(60)))\" for the completion of \(at), not a number")
        }
        return v
    }

    private func exitStatus() -> String {
        guard let p = process else { return "" }
        if p.isRunning { return " (still running)" }
        return " (it exited with status \(p.terminationStatus))"
    }

    /// One line of output, waiting at most `timeout` seconds; nil at end of output. A hang ends
    /// the process and throws.
    private func readLine(at: String) throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeFirst(nl + 1)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                stop()
                throw fail("no answer within timeout_s \(timeout) for the completion of \(at)")
            }
            var fds = pollfd(fd: outputFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&fds, 1, Int32(min(left * 1000, 1_000_000)) + 1)
            if ready < 0 { if errno == EINTR { continue }; throw fail("cannot read its output (errno \(errno))") }
            if ready == 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(outputFD, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw fail("cannot read its output (errno \(errno))") }
            if n == 0 {
                process?.waitUntilExit()
                return nil
            }
            pending += chunk[0..<n]
        }
    }
}
