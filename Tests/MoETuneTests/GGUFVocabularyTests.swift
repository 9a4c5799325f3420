import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// GGUF output from a Hugging Face folder's tokenizer: every `tokenizer.*` key and value
/// equals what llama.cpp's convert_hf_to_gguf.py writes for the same folder (exactly), and
/// the pre-tokenizer names equal the converter's for the real tokenizer fixtures
/// (scripts/make_gguf_vocab_fixture.py).
final class GGUFVocabularyTests: XCTestCase {
    func testSHA256() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex([UInt8](repeating: 0x61, count: 1_000)), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    /// A folder with tokenizer.json (unpacked from tokenizers/NAME) and the given files.
    static func folder(_ test: XCTestCase, tokenizer name: String, files: [String]) throws -> String {
        let dir = try makeTempDir(test)
        try TokenizerJSONTests.xz(Fixtures.dir("tokenizers/\(name)/tokenizer.json.xz")).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        for f in files { try FileManager.default.copyItem(atPath: f, toPath: dir + "/" + (f as NSString).lastPathComponent) }
        return dir
    }

    func testSmolLM2MetadataEqualsConverter() throws {
        let fx = Fixtures.dir("gguf/vocab/smollm2")
        let dir = try Self.folder(self, tokenizer: "smollm2", files: [fx + "/config.json", fx + "/tokenizer_config.json"])
        try TokenizerJSONTests.xz(fx + "/converter.gguf.xz").write(to: URL(fileURLWithPath: dir + "/converter.gguf"))
        let want = try GGUFFile(path: dir + "/converter.gguf")
        let got = try GGUFVocabulary.metadata(folder: dir, vocabSize: 49152, architecture: "llama")
        let wantKeys = want.keys.filter { $0.hasPrefix("tokenizer.") }
        XCTAssertEqual(Set(got.map(\.0)), Set(wantKeys))
        XCTAssertEqual(got.count, wantKeys.count, "no key twice")
        XCTAssertTrue(wantKeys.contains("tokenizer.chat_template"))
        for (k, v) in got {
            guard let w = want.metadata[k] else { continue }
            if v != w {
                if case .array(_, let a) = v, case .array(_, let b) = w, a.count == b.count,
                   let i = a.indices.first(where: { a[$0] != b[$0] }) {
                    XCTFail("\(k)[\(i)]: \(a[i]) vs the converter's \(b[i])")
                } else {
                    XCTFail("\(k): \(String(describing: v).prefix(200)) vs the converter's \(String(describing: w).prefix(200))")
                }
            }
        }
    }

    func testPreTokenizerNamesEqualConverter() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("gguf/vocab/pre-names.json")))
        let names = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertGreaterThanOrEqual(names.count, 5)
        for (tokenizer, name) in names {
            let src = Fixtures.dir("tokenizers/\(tokenizer)/tokenizer_config.json")
            let dir = try Self.folder(self, tokenizer: tokenizer, files: FileManager.default.fileExists(atPath: src) ? [src] : [])
            let got = try GGUFVocabulary.preTokenizer(HFTokenizer(directory: dir)).name
            XCTAssertEqual(got, name as? String, tokenizer)
        }
    }

    func testRefusals() throws {
        // A SentencePiece-style (byte-fallback) tokenizer.json.
        let sp = try Self.folder(self, tokenizer: "mistral-sp", files: [])
        assertMoETuneError(try GGUFVocabulary.metadata(folder: sp, vocabSize: 32768, architecture: "llama"), contains: ["tokenizer.json", "byte-level BPE"])
        // vocab_size below the tokenizer's ids.
        let fx = Fixtures.dir("gguf/vocab/smollm2")
        let small = try Self.folder(self, tokenizer: "smollm2", files: [fx + "/tokenizer_config.json"])
        assertMoETuneError(try GGUFVocabulary.metadata(folder: small, vocabSize: 1000, architecture: "llama"), contains: ["vocab_size 1000"])
        // No tokenizer.json.
        let none = try makeTempDir(self)
        assertMoETuneError(try GGUFVocabulary.metadata(folder: none, vocabSize: 10, architecture: "llama"), contains: ["tokenizer.json"])
    }
}
