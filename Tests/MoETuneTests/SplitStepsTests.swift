import Foundation
import XCTest
import Yams
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoETraining
@testable import MoEExport

/// The steps of functions split into parts (issue 24), each on its own: GGUF tokenizer
/// metadata, the config sections, the Jinja lexer's tokens, a data line's formats.
final class SplitStepsTests: XCTestCase {
    // MARK: GGUFVocabulary

    /// A RoBERTa post-processor adds BOS, EOS and SEP and fills an absent cls_token from its own.
    func testSpecialVocabRobertaProcessing() throws {
        var v = try GGUFVocabulary.SpecialVocab(config: ["bos_token": "<s>", "eos_token": "</s>"], reader: JSONReader(path: "t.json"))
        v.postProcessor(["type": "RobertaProcessing", "cls": ["<cls>", 0], "sep": ["<sep>", 2]])
        XCTAssertEqual(v.addSpecial.map(\.0), ["bos", "eos", "sep"])
        XCTAssertEqual(v.addSpecial.map(\.1), [true, true, true])
        XCTAssertEqual(v.cls, "<cls>")
        XCTAssertEqual(v.tc?["cls_token"] as? String, "<cls>")
        XCTAssertEqual(v.tc?["sep_token"] as? String, "<sep>")
    }

    /// A template whose last special token is not the config's EOS moves EOS to it, the old
    /// one becoming eot; its first becomes BOS (and CLS) when the config has none.
    func testSpecialVocabTemplateSingleMovesEOS() throws {
        var v = try GGUFVocabulary.SpecialVocab(config: ["eos_token": "<|eot|>"], reader: JSONReader(path: "t.json"))
        let special = { (s: String) -> [String: Any] in ["SpecialToken": ["id": s, "type_id": 0]] }
        let (first, last) = v.templateSingle([special("<bos>"), ["Sequence": ["id": "A", "type_id": 0]], special("<|end|>")])
        XCTAssertEqual(first, "<bos>")
        XCTAssertEqual(last, "<|end|>")
        XCTAssertEqual(v.typesOrder.suffix(1), ["eot"])
        XCTAssertEqual(v.tc?["eot_token"] as? String, "<|eot|>")
        XCTAssertEqual(v.eos, "<|end|>")
        XCTAssertEqual(v.bos, "<bos>")
        XCTAssertEqual(v.cls, "<bos>")
        XCTAssertEqual(v.addSpecial.map(\.0), ["bos", "eos"])
        XCTAssertEqual(v.addSpecial.map(\.1), [true, true])
        // One item only: nothing found, nothing changed.
        var w = try GGUFVocabulary.SpecialVocab(config: nil, reader: JSONReader(path: "t.json"))
        let none = w.templateSingle([special("<bos>")])
        XCTAssertNil(none.first)
        XCTAssertNil(none.last)
        XCTAssertTrue(w.addSpecial.isEmpty)
    }

    func testSpecialVocabRefusals() throws {
        assertMoETuneError(try GGUFVocabulary.SpecialVocab(config: ["bos_token": ["text": "<s>"]], reader: JSONReader(path: "tc.json")),
                           contains: ["tc.json", "bos_token", "must be a token string"])
        var v = try GGUFVocabulary.SpecialVocab(config: [:], reader: JSONReader(path: "tc.json"))
        v.setId("pad", -1)
        v.setId("pad", 5)   // the first kept
        assertMoETuneError(try v.keys(folder: "/m"), contains: ["/m", "invalid pad token id -1"])
    }

    /// The token table, the special ids and the keys of SmolLM2's tokenizer: ids past the
    /// tokenizer's are "[PADi]" UNUSED; <|im_start|> (an added special token) is CONTROL and BOS.
    func testTokenTableAndSpecialIdsOfSmolLM2() throws {
        let fx = Fixtures.dir("gguf/vocab/smollm2")
        let dir = try GGUFVocabularyTests.folder(self, tokenizer: "smollm2", files: [fx + "/config.json", fx + "/tokenizer_config.json"])
        let f = try GGUFVocabulary.TokenizerFolder(dir)
        let (tokens, types) = try GGUFVocabulary.tokenTable(f, vocabSize: 49154)
        XCTAssertEqual(tokens.count, 49154)
        XCTAssertEqual(tokens[49153], .string("[PAD49153]"))
        XCTAssertEqual(types[49153], .int32(GGUFVocabulary.unused))
        let start = try XCTUnwrap(f.tokenizer.tokenId("<|im_start|>"))
        XCTAssertEqual(tokens[Int(start)], .string("<|im_start|>"))
        XCTAssertEqual(types[Int(start)], .int32(GGUFVocabulary.control))
        XCTAssertEqual(types[1000], .int32(GGUFVocabulary.normal))
        assertMoETuneError(try GGUFVocabulary.tokenTable(f, vocabSize: 100), contains: ["vocab_size 100"])

        var v = try GGUFVocabulary.SpecialVocab(config: f.config, reader: f.configReader)
        try v.readIds(added: f.added, modelConfig: dir + "/config.json")
        let keys = try v.keys(folder: dir)
        let ids = Dictionary(uniqueKeysWithValues: keys.map { ($0.0, $0.1) })
        XCTAssertEqual(ids["tokenizer.ggml.bos_token_id"], .uint32(UInt32(start)))
        XCTAssertEqual(ids["tokenizer.ggml.eos_token_id"], .uint32(UInt32(try XCTUnwrap(f.tokenizer.tokenId("<|im_end|>")))))
        XCTAssertEqual(ids["tokenizer.ggml.unknown_token_id"], .uint32(UInt32(try XCTUnwrap(f.tokenizer.tokenId("<|endoftext|>")))))
        XCTAssertEqual(try GGUFVocabulary.chatTemplate(try XCTUnwrap(f.config), folder: f), f.config?["chat_template"] as? String)
        XCTAssertFalse(try GGUFVocabulary.mergeList(f).isEmpty)
    }

    func testChatTemplateAndNormalizerSteps() throws {
        let f = try GGUFVocabularyTests.folder(self, tokenizer: "gpt2-style", files: [])
        let folder = try GGUFVocabulary.TokenizerFolder(f)
        assertMoETuneError(try GGUFVocabulary.chatTemplate(["chat_template": [["name": "default", "template": "x"]]], folder: folder) as Any,
                           contains: ["chat_template", "list of named templates"])
        XCTAssertNil(try GGUFVocabulary.chatTemplate([:], folder: folder))
        try "{{ x }}".write(toFile: f + "/chat_template.jinja", atomically: true, encoding: .utf8)
        XCTAssertEqual(try GGUFVocabulary.chatTemplate(["chat_template": JSONNull()], folder: folder), "{{ x }}")

        let seq: [String: Any] = ["normalizer": ["type": "Sequence", "normalizers": [
            ["type": "Lowercase"], ["type": "BertNormalizer", "lowercase": false, "strip_accents": true]]]]
        let keys = GGUFVocabulary.normalizerKeys(seq)
        XCTAssertEqual(keys.map(\.0), ["tokenizer.ggml.normalizer.lowercase", "tokenizer.ggml.normalizer.strip_accents"])
        XCTAssertEqual(keys.map(\.1), [.bool(false), .bool(true)])
        XCTAssertTrue(GGUFVocabulary.normalizerKeys([:]).isEmpty)
        var out: [(String, GGUFValue)] = [("a", .bool(true)), ("b", .bool(true))]
        GGUFVocabulary.set(&out, "a", .bool(false))
        GGUFVocabulary.set(&out, "c", .bool(false))
        XCTAssertEqual(out.map(\.0), ["a", "b", "c"])
        XCTAssertEqual(out[0].1, .bool(false))
    }

    // MARK: TrainConfig sections

    static func reader(_ yaml: String) throws -> ConfigReader {
        try ConfigReader(file: "c.yaml", prefix: "", node: try Yams.compose(yaml: yaml), overridden: [])
    }

    func testLoRAOverridesStep() throws {
        let r = try Self.reader("lora:\n  rank: 8\n  overrides:\n    query: {rank: 4}\n")
        let l = try r.section("lora")
        let o = try TrainConfig.loraOverrides(l, rank: 8, alpha: 32)
        XCTAssertEqual(o, [.query: LoRAShape(rank: 4, alpha: 32)])
        let bad = try Self.reader("lora:\n  overrides:\n    query: {rnk: 4}\n")
        assertMoETuneError(try TrainConfig.loraOverrides(try bad.section("lora"), rank: 8, alpha: 16),
                           contains: ["c.yaml", "lora.overrides.query.rnk", "unknown key"])
    }

    func testQuantizationAndOptimizerSteps() throws {
        XCTAssertNil(try TrainConfig.quantizationSection(Self.reader("model: m\n")))
        XCTAssertNil(try TrainConfig.quantizationSection(Self.reader("quantization:\n")))
        XCTAssertEqual(try TrainConfig.quantizationSection(Self.reader("quantization: {double_quant: false}\n")),
                       QuantizationSpec(doubleQuant: false))
        assertMoETuneError(try TrainConfig.quantizationSection(Self.reader("quantization: {block_size: 32}\n")) as Any,
                           contains: ["quantization.block_size", "line 1", "only 64"])
        assertMoETuneError(try TrainConfig.optimizerSection(Self.reader("optimizer: {betas: [0.9]}\n")),
                           contains: ["optimizer.betas", "two numbers"])
        let opt = try TrainConfig.optimizerSection(Self.reader("optimizer: {betas: [0.8, 1], lr: 0.5}\n"))
        XCTAssertEqual(opt.beta1, 0.8)
        XCTAssertEqual(opt.beta2, 1)
        XCTAssertEqual(opt.lr, 0.5)
        assertMoETuneError(try TrainConfig.trainingSection(Self.reader("training: {batch_size: 2}\n")),
                           contains: ["training.out_dir", "required key is missing"])
    }

    // MARK: JinjaLexer

    func testLexerTokenSteps() throws {
        let lx = JinjaLexer("1_000.5e2 x_1 'a\\n' // 99999999999999999999 ?")
        XCTAssertTrue(try lx.token(at: 0, line: 3) == (JinjaToken(kind: .float(100050), line: 3), 9))
        XCTAssertTrue(try lx.token(at: 10, line: 1) == (JinjaToken(kind: .name("x_1"), line: 1), 13))
        XCTAssertTrue(try lx.token(at: 14, line: 1) == (JinjaToken(kind: .string("a\n"), line: 1), 19))
        XCTAssertTrue(try lx.token(at: 20, line: 1) == (JinjaToken(kind: .op("//"), line: 1), 22))
        XCTAssertThrowsError(try lx.token(at: 23, line: 2)) { XCTAssertEqual(($0 as? JinjaError)?.message, "integer 99999999999999999999 is too large") }
        XCTAssertThrowsError(try lx.token(at: 44, line: 2)) { XCTAssertEqual(($0 as? JinjaError)?.line, 2) }
        XCTAssertThrowsError(try JinjaLexer("'open").token(at: 0, line: 1))
    }

    func testLexerTagSteps() throws {
        let template = "ab{# c -#}  {{ {'k': 1} -}}  x{% raw %}{{ y }}{% endraw %}"
        var lx = JinjaLexer(template)
        XCTAssertEqual(lx.nextTag(from: 0), 2)
        XCTAssertEqual(try lx.commentEnd(5, tagLine: 1), 12)
        XCTAssertEqual(lx.nextTag(from: 12), 12)
        let tokens = try lx.tagTokens(from: 14, isBlock: false, tagLine: 1)
        XCTAssertEqual(tokens.map(\.kind), [.op("{"), .string("k"), .op(":"), .int(1), .op("}")])
        XCTAssertNil(JinjaLexer("{{ x").nextTag(from: 2))
        var open = JinjaLexer("{% if x")
        XCTAssertThrowsError(try open.tagTokens(from: 2, isBlock: true, tagLine: 7)) {
            XCTAssertEqual(($0 as? JinjaError)?.description, "chat template line 7: missing '%}' closing the tag")
        }
        var whole = JinjaLexer(template)
        let chunks = try whole.chunks()
        XCTAssertEqual(chunks.count, 4)
        if case .text(let raw) = chunks[3] { XCTAssertEqual(raw, "{{ y }}") } else { XCTFail("raw body") }
    }

    // MARK: Example

    func testExampleFieldAndCompletionSteps() throws {
        assertMoETuneError(try Dataset.field(["prompt": 3], "prompt", path: "d.jsonl", line: 4) as Any,
                           contains: ["d.jsonl", "4", "field \"prompt\" must be a string"])
        assertMoETuneError(try Dataset.field([:], "output", path: "d.jsonl", line: 2) as Any, contains: ["missing field \"output\""])
        XCTAssertNil(try Dataset.field(["input": NSNull()], "input", required: false, path: "d.jsonl", line: 2))

        let tok = try Tokenizer(path: Fixtures.dir("llama") + "/tokenizer.model", bosId: 1, eosId: 2)
        let row: [String: Any] = ["instruction": "Add", "input": "1 and 2", "output": "3"]
        let ex = try Dataset.completionExample(row, format: .alpaca, path: "d.jsonl", line: 1, task: "t",
                                               tokenizer: tok, options: DataOptions())
        XCTAssertEqual(ex.tokens.last, 2)
        XCTAssertEqual(ex.reply, "3")
        XCTAssertEqual(ex.promptLength, ex.replyStart)
        XCTAssertEqual(ex.counted, Array(repeating: false, count: ex.promptLength) + Array(repeating: true, count: ex.tokens.count - ex.promptLength))
        let all = try Dataset.completionExample(row, format: .alpaca, path: "d.jsonl", line: 1, task: nil,
                                                tokenizer: tok, options: DataOptions(trainOnInputs: true))
        XCTAssertEqual(all.counted, [false] + Array(repeating: true, count: all.tokens.count - 1))

        let chat: [String: Any] = ["messages": [["role": "user", "content": "hi"], ["role": "assistant", "content": "yo"]]]
        let c = try Dataset.builtinChatExample(chat, path: "d.jsonl", line: 1, task: nil, tokenizer: tok, options: DataOptions())
        XCTAssertEqual(c.reply, "yo")
        XCTAssertGreaterThan(c.countedTokens, 0)
        assertMoETuneError(try Dataset.builtinChatExample(["messages": [["role": "user"]]], path: "d.jsonl", line: 9, task: nil,
                                                          tokenizer: tok, options: DataOptions()),
                           contains: ["d.jsonl", "9", "messages[0] must be an object"])
    }
}
