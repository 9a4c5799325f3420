import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Every kind of bad input ends in a one-line error naming the file (and line or key).
final class BadInputTests: XCTestCase {
    func testMissingModelFolder() {
        assertMoETuneError(try LoadedModel.load(directory: "/nonexistent/model"), contains: ["/nonexistent/model", "not found"])
    }

    func testMissingSafetensors() throws {
        let dir = try copyFixture("mixtral", self)
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [dir, "no model.safetensors"])
    }

    func testTruncatedSafetensors() throws {
        let dir = try copyFixture("mixtral", self)
        let path = dir + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [path, "past the end"])
    }

    func testMissingShard() throws {
        let dir = try copyFixture("llama", self)
        let shard = try FileManager.default.contentsOfDirectory(atPath: dir).first { $0.hasPrefix("model-") }!
        try FileManager.default.removeItem(atPath: dir + "/" + shard)
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["model.safetensors.index.json", shard, "missing"])
    }

    /// An index that maps a tensor outside the folder, or to another shard than the one that
    /// stores it, is refused naming the index and the tensor.
    func testShardIndexPathsAndMismatchesAreRefused() throws {
        for (bad, expect) in [("../outside.safetensors", "not a file name"), ("/tmp/abs.safetensors", "not a file name"),
                              ("sub/x.safetensors", "not a file name"), ("", "not a file name"), ("OTHER", "but stored in")] {
            let dir = try copyFixture("llama", self)
            let indexPath = dir + "/model.safetensors.index.json"
            var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: indexPath))) as! [String: Any]
            var map = obj["weight_map"] as! [String: String]
            let shards = Array(Set(map.values)).sorted()
            XCTAssertGreaterThan(shards.count, 1, "the llama fixture is sharded")
            // A tensor whose shard holds others too, so that shard is still read.
            let (tensor, file) = map.sorted { $0.key < $1.key }.first { e in map.values.filter { $0 == e.value }.count > 1 }!
            map[tensor] = bad == "OTHER" ? shards.first { $0 != file }! : bad
            obj["weight_map"] = map
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: indexPath))
            assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["model.safetensors.index.json", tensor, expect])
        }
    }

    func testConfigMissingRequiredField() throws {
        let dir = try copyFixture("mixtral", self)
        try editConfig(dir) { $0.removeValue(forKey: "hidden_size") }
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [dir + "/config.json", "hidden_size", "missing"])
    }

    func testUnsupportedModelType() throws {
        let dir = try copyFixture("llama", self)
        try editConfig(dir) { $0["model_type"] = "gpt2" }
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["config.json", "model_type", "gpt2"])
    }

    func testConfigWrongType() throws {
        let dir = try copyFixture("llama", self)
        try editConfig(dir) { $0["num_hidden_layers"] = "two" }
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["config.json", "num_hidden_layers", "expected a number"])
    }

    func testConfigNotJSON() throws {
        let dir = try copyFixture("llama", self)
        try Data("{oops".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [dir + "/config.json", "not a JSON object"])
    }

    func testShapeMismatchNamesTensor() throws {
        let dir = try copyFixture("mixtral", self)
        try editConfig(dir) { $0["intermediate_size"] = 100 }
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["model.safetensors", "w1.weight", "shape"])
    }

    func testTokenizerVocabularyCheck() throws {
        // The llama fixture with a tokenizer that has more pieces than its embedding rows.
        let dir = try copyFixture("llama", self)
        let big = Fixtures.dir("tokenizer-large.model")
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.model")
        try FileManager.default.copyItem(atPath: big, toPath: dir + "/tokenizer.model")
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [dir + "/tokenizer.model", "vocab_size"])
    }

    func testCorruptTokenizer() throws {
        let dir = try copyFixture("llama", self)
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.model"))
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: [dir + "/tokenizer.model", "not a SentencePiece model"])
    }

    func testJSONLBadLines() throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir("llama"))
        let dir = try makeTempDir(self)
        func load(_ text: String) throws -> Dataset {
            let path = dir + "/d.jsonl"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return try Dataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, options: DataOptions())
        }
        assertMoETuneError(try load("{\"text\": \"a\"}\n{not json}\n"), contains: ["d.jsonl:2", "not valid JSON"])
        assertMoETuneError(try load("{\"text\": \"a\"}\n\n[1, 2]\n"), contains: ["d.jsonl:3", "JSON object"])
        assertMoETuneError(try load("{\"prompt\": \"a\"}\n"), contains: ["d.jsonl:1", "completion"])
        assertMoETuneError(try load("{\"foo\": \"a\"}\n"), contains: ["d.jsonl:1", "no known fields", "foo"])
        assertMoETuneError(try load("{\"text\": 5}\n"), contains: ["d.jsonl:1", "\"text\"", "string"])
        assertMoETuneError(try load("\n\n"), contains: ["d.jsonl", "no examples"])
        assertMoETuneError(try load(""), contains: ["d.jsonl", "no examples"])
        assertMoETuneError(try Dataset.load(path: dir + "/missing.jsonl", tokenizer: loaded.tokenizer, vocabSize: 10, options: DataOptions()),
                           contains: ["missing.jsonl", "not found"])
        // Blank lines are not examples, and nothing else is dropped.
        let ok = try load("{\"text\": \"a b\"}\n\n{\"prompt\": \"x\", \"completion\": \"y\"}\n")
        XCTAssertEqual(ok.examples.map(\.line), [1, 3])
    }

    func editConfig(_ dir: String, _ edit: (inout [String: Any]) -> Void) throws {
        let url = URL(fileURLWithPath: dir + "/config.json")
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: url)
    }
}
