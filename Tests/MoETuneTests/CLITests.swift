import XCTest

/// The command-line layer: bad input ends in one line on stderr and exit code 1, never
/// a crash; --json prints exactly one JSON object.
final class CLITests: XCTestCase {
    /// The moe-tune binary built beside the test bundle (scripts/test.sh builds both).
    var binary: URL {
        let products = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }.map {
            URL(fileURLWithPath: $0.bundlePath).deletingLastPathComponent()
        } ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return products.appendingPathComponent("moe-tune")
    }

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            XCTFail("moe-tune is not built at \(binary.path); run `swift build --build-tests` first")
            return (-1, "", "")
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertOneLineError(_ args: [String], contains fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args)
        XCTAssertEqual(r.status, 1, "exit status", file: file, line: line)
        let lines = r.err.split(separator: "\n").filter { $0.hasPrefix("moe-tune: error:") }
        XCTAssertEqual(lines.count, 1, "one error line, got: \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.contains(fragment), "'\(r.err)' should mention \(fragment)", file: file, line: line)
    }

    func testBadInputExitsWithOneLine() throws {
        let dir = try makeTempDir(self)
        let bad = dir + "/bad.jsonl"
        try Data("{\"text\": \"ok\"}\nnot json\n".utf8).write(to: URL(fileURLWithPath: bad))
        try assertOneLineError(["eval", "--model", "/nonexistent/model", "--data", bad], contains: "/nonexistent/model")
        try assertOneLineError(["eval", "--model", Fixtures.dir("mixtral"), "--data", bad], contains: "bad.jsonl:2")
        try assertOneLineError(["eval", "--model", Fixtures.dir("mixtral"), "--data", bad, "--adapter", dir], contains: "adapter_config.json")
        try Data("model: m\ndata: {train: t.jsonl}\ntraining: {out_dir: o}\nlora:\n  rnak: 3\n".utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        try assertOneLineError(["train", "--config", dir + "/c.yaml"], contains: "did you mean lora.rank")
        // A GGUF-only option given for a Hugging Face folder is refused, not ignored.
        let r = try runMoETune(["merge", "--model", Fixtures.dir("mixtral"), "--adapter", dir, "--out", dir + "/m", "--gguf-type", "q8_0"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--gguf-type is for --format gguf"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m"))
    }

    func testEvalJSONIsOneObject() throws {
        let r = try run(["eval", "--model", Fixtures.dir("mixtral"), "--data", Fixtures.dir("eval.jsonl"), "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n")
        XCTAssertEqual(lines.count, 1)
        let obj = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        XCTAssertEqual(Set(obj.keys), ["loss", "perplexity", "tokens", "examples"])
        XCTAssertEqual(obj["examples"] as? Int, 12)
    }
}
