import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// A SentencePiece-type GGUF tokenizer (`tokenizer.ggml.model` "llama") built from a real
/// one: Mistral 7B v0.1's tokenizer.model (mistral-common on PyPI) written as a vocabulary-only
/// GGUF by scripts/make_gguf_sp_tokenizer_fixture.py. Every string's ids (unicode, spaces,
/// digits, bytes outside the vocabulary through <0xNN>, special tokens in the text) equal
/// transformers' GGUF reader's exactly, and decoding gives the text back where it does.
final class GGUFSentencePieceTests: XCTestCase {
    func testRealSentencePieceGGUFMatchesTransformers() throws {
        let dir = try makeTempDir(self)
        let src = Fixtures.dir("gguf/sp-tokenizer")
        try TokenizerJSONTests.xz(src + "/tokenizer.gguf.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.gguf"))
        let tok = try TokenizerLoader.load(directory: dir + "/tokenizer.gguf")
        let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/expected.json"))) as! [[String: Any]]
        XCTAssertGreaterThan(expected.count, 50)
        var bytes = 0, spAgrees = 0
        for e in expected {
            let text = e["text"] as! String, ids = (e["ids"] as! [NSNumber]).map { $0.int32Value }
            let ours = try tok.encode(text, addSpecialTokens: true)
            XCTAssertEqual(ours, ids, "ids of \(text.debugDescription)")
            bytes += ours.filter { (3...258).contains($0) }.count
            if e["sentencepiece_agrees"] as? Bool == true { spAgrees += 1 }
        }
        XCTAssertGreaterThan(bytes, 10, "byte fallback <0xNN> tokens occur")
        print("SentencePiece GGUF: \(expected.count) strings equal transformers' ids (\(spAgrees) also sentencepiece's), \(bytes) byte tokens")
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.eosId, 2)
        XCTAssertEqual(try tok.decode(try tok.encode("Hello  world 123 日本語 😀", addSpecialTokens: false)), "Hello  world 123 日本語 😀")
    }

    /// Merges recovered from the scores: transformers' generate_merges on a small vocabulary.
    func testGenerateMergesOrdersLikeTransformers() {
        let tokens = ["a", "b", "ab", "ba", "abb", "\u{2581}", "\u{2581}a", "bb"]
        let scores: [Float] = [0, 0, -1, -3, -2, 0, -1, -2]
        var index: [[UInt8]: Int] = [:], score: [[UInt8]: Float] = [:]
        for (i, t) in tokens.enumerated() { index[Array(t.utf8)] = i; score[Array(t.utf8)] = scores[i] }
        // Python: generate_merges({t: i}, {t: s}) on these lists.
        XCTAssertEqual(GGUFTokenizer.generateMerges(order: tokens, index: index, score: score),
                       [["a", "b"], ["\u{2581}", "a"], ["ab", "b"], ["a", "bb"], ["b", "b"], ["b", "a"]])
    }
}
