import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Findings of a hostile probe: numbers, names and sizes from files that used to trap,
/// exhaust memory or be taken silently; each is a one-line refusal naming the file and key now.
final class HostileInputTests: XCTestCase {
    let model = #"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#

    func tokenizerDir(_ json: String, files: [String: String] = [:]) throws -> String {
        let dir = try makeTempDir(self)
        try Data(json.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        for (name, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/" + name)) }
        return dir
    }

    /// D2: an added token `"id": 4294967296` trapped `Int32(...)` (exit 132). Every token id a
    /// tokenizer file gives is checked before the conversion: added tokens, post-processor
    /// ids, generation_config.json's eos_token_id, the vocabulary.
    func testTokenIdsFromFilesAreCheckedNotTrapped() throws {
        for id in ["4294967296", "-1", "16777216", "9223372036854775807"] {
            let added = try tokenizerDir(#"{"model": \#(model), "added_tokens": [{"id": \#(id), "content": "<x>", "special": true}]}"#)
            assertMoETuneError(try HFTokenizer(directory: added), contains: [added + "/tokenizer.json", "added_tokens[0].id", "id \(id) is outside 0..<16777216"])
            let roberta = try tokenizerDir(#"{"model": \#(model), "post_processor": {"type": "RobertaProcessing", "cls": ["a", \#(id)], "sep": ["b", 1]}}"#)
            assertMoETuneError(try HFTokenizer(directory: roberta), contains: ["post_processor.cls", "id \(id) is outside"])
            let template = try tokenizerDir(#"""
                {"model": \#(model), "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "a"}}, {"Sequence": {"id": "A"}}],
                 "special_tokens": {"a": {"id": "a", "ids": [\#(id)], "tokens": ["a"]}}}}
                """#)
            assertMoETuneError(try HFTokenizer(directory: template), contains: ["post_processor.special_tokens.a.ids", "id \(id) is outside"])
            let generation = try tokenizerDir(#"{"model": \#(model)}"#, files: ["generation_config.json": #"{"eos_token_id": [1, \#(id)]}"#])
            assertMoETuneError(try HFTokenizer(directory: generation), contains: [generation + "/generation_config.json", "eos_token_id[1]", "outside"])
            let vocab = try tokenizerDir(#"{"model": {"type": "BPE", "vocab": {"a": \#(id)}, "merges": []}}"#)
            assertMoETuneError(try HFTokenizer(directory: vocab), contains: ["model.vocab[\"a\"]", "id \(id) is outside"])
        }
        // The command line: one line, exit 1, no trap.
        let dir = try tokenizerDir(#"{"model": \#(model), "added_tokens": [{"id": 4294967296, "content": "<x>"}]}"#,
                                   files: ["d.jsonl": #"{"text": "ab"}"# + "\n"])
        let r = try runMoETune(["tokenize", "--model", dir, "--data", dir + "/d.jsonl"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertEqual(r.err, "moe-tune: error: \(dir)/tokenizer.json: added_tokens[0].id: id 4294967296 is outside 0..<16777216\n")
    }

    /// config.json's bos/eos ids and a GGUF's token ids went through `Int32(...)` too (2^32
    /// trapped; a list element was truncated to 0 silently).
    func testModelConfigTokenIdsAreChecked() throws {
        for (key, value) in [("eos_token_id", 4294967296 as Any), ("eos_token_id", [2, 4294967296] as Any), ("bos_token_id", 4294967296 as Any)] {
            let dir = try copyFixture("llama", self)
            let path = dir + "/config.json"
            var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            json[key] = value
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
            assertMoETuneError(try ModelConfig.load(directory: dir), contains: [path, key, "4294967296", "outside"])
        }
    }

    /// A `%.NNN…f` precision too long for an Int overflowed while it was read.
    func testPercentFormatPrecisionDoesNotOverflow() throws {
        assertMoETuneError(try JinjaTemplate(#"{{ "%.99999999999999999999999f" % 1.5 }}"#).render([:]), contains: ["format precision too large"])
    }
}
