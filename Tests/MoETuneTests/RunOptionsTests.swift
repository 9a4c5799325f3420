import Foundation
import XCTest
@testable import MoEFormats
@testable import MoECore
@testable import MoETraining

/// The run options (RunOptions) recorded with a training run: config.yaml ends with them as
/// comments, metrics.jsonl starts each start or resume with a run_options line; a resume under
/// other options is not refused (they are not part of the config) and records its own.
final class RunOptionsTests: XCTestCase {
    func testTrainRecordsTheOptionsAndResumesUnderOthers() throws {
        let dir = try makeTempDir(self)
        let out = dir + "/out"
        func train(steps: Int, _ extra: [String], environment: [String: String]) throws {
            let args = ["train", "--config", Fixtures.root + "/../../../configs/demo.yaml",
                        "--set", "model=\(Fixtures.dir("mixtral"))", "--set", "data.train=\(Fixtures.dir("eval.jsonl"))",
                        "--set", "data.valid=null", "--set", "data.test=null", "--set", "training.eval_every=0",
                        "--set", "training.max_steps=\(steps)", "--set", "training.save_every=1", "--set", "training.out_dir=\(out)"] + extra
            let r = try runMoETune(args, environment: environment)
            XCTAssertEqual(r.status, 0, r.err)
        }
        try train(steps: 2, [], environment: ["MOE_TUNE_THREADS": "1"])
        let yaml = try String(contentsOfFile: out + "/config.yaml", encoding: .utf8)
        XCTAssertTrue(yaml.contains("\n# run options"), yaml)
        XCTAssertTrue(yaml.contains("\n#   threads: 1\n"), yaml)
        XCTAssertTrue(yaml.contains("\n#   attention_block: 64\n"), yaml)
        // The config reads back as before (the options are comments).
        let marker = try XCTUnwrap(yaml.range(of: "# run options"))
        let configPart = String(yaml[..<marker.lowerBound])
        XCTAssertEqual(try TrainConfig.load(path: out + "/config.yaml").resolvedYAML(), configPart)
        var lines = try MetricsLog.read(path: out + "/metrics.jsonl")
        XCTAssertEqual(lines.first?["type"] as? String, "run_options")
        XCTAssertEqual((lines.first?["options"] as? [String: Any])?["threads"] as? Int, 1)

        try train(steps: 3, ["--resume"], environment: ["MOE_TUNE_THREADS": "2", "MOE_TUNE_ATTENTION_BLOCK": "8"])
        lines = try MetricsLog.read(path: out + "/metrics.jsonl")
        let recorded = lines.filter { $0["type"] as? String == "run_options" }.compactMap { $0["options"] as? [String: Any] }
        XCTAssertEqual(recorded.map { $0["threads"] as? Int }, [1, 2])
        XCTAssertEqual(recorded.map { $0["attention_block"] as? Int }, [64, 8])
        XCTAssertEqual(lines.filter { $0["type"] as? String == "step" }.compactMap { $0["step"] as? Int }, [1, 2, 3])
        XCTAssertTrue(try String(contentsOfFile: out + "/config.yaml", encoding: .utf8).contains("\n#   attention_block: 8\n"))
    }
}
