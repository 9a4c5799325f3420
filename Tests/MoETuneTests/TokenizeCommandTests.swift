import Foundation
import XCTest

/// `moe-tune tokenize` on a folder with only tokenizer files (Qwen2.5's tokenizer.json and
/// tokenizer_config.json with its chat template).
extension CLITests {
    func chatData(_ count: Int) throws -> (path: String, rows: [ChatDataTests.Row]) {
        let rows = Array(try ChatDataTests.rows("qwen2.5").prefix(count))
        let path = try makeTempDir(self) + "/chats.jsonl"
        try Data((rows.map(\.line).joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        return (path, rows)
    }

    func testTokenizeJSONGivesTheTrainingIdsAndMask() throws {
        let (path, rows) = try chatData(3)
        let r = try run(["tokenize", "--model", try ChatDataTests.folder("qwen2.5"), "--data", path, "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        for (line, row) in zip(lines, rows) {
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: [Int]])
            XCTAssertEqual(obj["ids"], row.ids.map(Int.init))
            XCTAssertEqual(obj["mask"]?.count, row.ids.count)
        }
        // "Hi there. How can I help?<|im_end|>": 8 tokens and the end-of-turn marker.
        let first = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: [Int]])
        XCTAssertEqual(first["mask"]?.reduce(0, +), 9)
    }

    func testTokenizeShowsTrainedSpansAndASummary() throws {
        let (path, _) = try chatData(3)
        let r = try run(["tokenize", "--model", try ChatDataTests.folder("qwen2.5"), "--data", path])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("<|im_start|>assistant\n[[First answer.<|im_end|>]]\n<|im_start|>user\nSecond, please"), r.out)
        XCTAssertTrue(r.out.contains("3 examples, 123 tokens, 23 trained tokens, 0 truncated"), r.out)
        let cut = try run(["tokenize", "--model", try ChatDataTests.folder("qwen2.5"), "--data", path, "--max-seq-len", "30"])
        XCTAssertTrue(cut.out.contains("2 truncated (--max-seq-len 30)"), cut.out)
    }

    func testTokenizeRefusesABadLine() throws {
        let dir = try makeTempDir(self)
        try Data("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n".utf8).write(to: URL(fileURLWithPath: dir + "/d.jsonl"))
        try assertOneLineError(["tokenize", "--model", try ChatDataTests.folder("qwen2.5"), "--data", dir + "/d.jsonl"],
                               contains: "d.jsonl:1: the conversation has no assistant message")
    }
}
