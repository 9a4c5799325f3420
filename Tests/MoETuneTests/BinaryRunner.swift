import Foundation
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The moe-tune binary built beside the test bundle (scripts/test.sh builds both).
var moeTuneBinary: String {
    let products = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }.map {
        URL(fileURLWithPath: $0.bundlePath).deletingLastPathComponent()
    } ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return products.appendingPathComponent("moe-tune").path
}

/// Runs moe-tune to the end; stdout and stderr go through files (no pipe can fill up).
/// `environment`: variables set for this run on top of the test's own.
func runMoETune(_ args: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
    guard FileManager.default.isExecutableFile(atPath: moeTuneBinary) else {
        throw MoETuneError.invalid("moe-tune is not built at \(moeTuneBinary); run `swift build --build-tests` first")
    }
    let dir = NSTemporaryDirectory() + "moe-tune-run-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    FileManager.default.createFile(atPath: dir + "/out", contents: nil)
    FileManager.default.createFile(atPath: dir + "/err", contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: moeTuneBinary)
    p.arguments = args
    if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    p.standardOutput = FileHandle(forWritingAtPath: dir + "/out")
    p.standardError = FileHandle(forWritingAtPath: dir + "/err")
    try p.run()
    p.waitUntilExit()
    let read = { (name: String) in (try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "" }
    return (p.terminationStatus, read("out"), read("err"))
}

/// Runs moe-tune with `args` under `ulimit -v limitKB` and `timeout seconds`, stdout and
/// stderr into dir/stdout and dir/stderr; returns the exit status and standard error.
func runMoeTuneUnderAddressLimit(_ args: [String], limitKB: Int, timeout seconds: Int, dir: String) throws -> (status: Int32, stderr: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/bash")
    p.arguments = ["-c", "ulimit -v \(limitKB); exec timeout \(seconds) \"$0\" \"$@\" >\(dir)/stdout 2>\(dir)/stderr", moeTuneBinary] + args
    try p.run()
    p.waitUntilExit()
    return (p.terminationStatus, (try? String(contentsOfFile: dir + "/stderr", encoding: .utf8)) ?? "")
}
