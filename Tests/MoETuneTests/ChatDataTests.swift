import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// {"messages": ...} examples with a model's own Jinja template: ids equal to transformers'
/// apply_chat_template(messages, tokenize=True) (Fixtures/chat/expected.json, made by
/// scripts/make_chat_fixtures.py) and loss masks that cover exactly the assistant turns.
final class ChatDataTests: XCTestCase {
    /// (tokenizer fixture, tokenizer_config.json, chat_template.jinja) per template set.
    static let sets: [String: (tokenizer: String, config: String, template: String?)] = [
        "qwen2.5": ("qwen2.5", "chat/qwen2.5/tokenizer_config.json", nil),
        "qwen3": ("qwen3", "tokenizers/qwen3/tokenizer_config.json", nil),
        "llama3.2": ("llama3", "tokenizers/llama3/tokenizer_config.json", "chat/llama3.2/chat_template.jinja"),
    ]

    /// A model folder with only tokenizer files (once per run).
    static func folder(_ name: String) throws -> String {
        let set = sets[name]!
        let dir = NSTemporaryDirectory() + "moe-tune-chat-\(getpid())/" + name
        if FileManager.default.fileExists(atPath: dir + "/tokenizer.json") { return dir }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try TokenizerJSONTests.xz(Fixtures.dir("tokenizers/\(set.tokenizer)/tokenizer.json.xz")).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        try FileManager.default.copyItem(atPath: Fixtures.dir(set.config), toPath: dir + "/tokenizer_config.json")
        if let t = set.template { try FileManager.default.copyItem(atPath: Fixtures.dir(t), toPath: dir + "/chat_template.jinja") }
        return dir
    }

    struct Row: Decodable { var line: String; var text: String; var ids: [Int32] }

    static func rows(_ name: String) throws -> [Row] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("chat/expected.json")))
        return try JSONDecoder().decode([String: [Row]].self, from: data)[name] ?? []
    }

    /// The model's template with strftime_now fixed to the day the fixtures used.
    static func options(_ dir: String, trainOnInputs: Bool = false) throws -> DataOptions {
        guard case var .jinja(renderer) = try ChatFormat.resolve(nil, modelDirectory: dir) else {
            throw MoETuneError.invalid("\(dir) has no chat template")
        }
        renderer.now = { Date(timeIntervalSince1970: 1_722_000_000) }   // 26 Jul 2024
        return DataOptions(maxSeqLen: 4096, trainOnInputs: trainOnInputs, chat: .jinja(renderer))
    }

    nonisolated(unsafe) static var tokenizers: [String: HFTokenizer] = [:]

    /// The tokenizer of a set, read once per run (reading a 150k-token tokenizer.json takes seconds in debug builds).
    static func tokenizer(_ name: String) throws -> HFTokenizer {
        if let t = tokenizers[name] { return t }
        let t = try HFTokenizer(directory: try folder(name))
        tokenizers[name] = t
        return t
    }

    func load(_ name: String, trainOnInputs: Bool = false) throws -> (HFTokenizer, Dataset, [Row]) {
        let dir = try Self.folder(name)
        let tok = try Self.tokenizer(name)
        let rows = try Self.rows(name)
        XCTAssertGreaterThan(rows.count, 5)
        let path = try makeTempDir(self) + "/chats.jsonl"
        try Data((rows.map(\.line).joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        let ds = try Dataset.load(path: path, tokenizer: tok, vocabSize: tok.vocabSize, options: try Self.options(dir, trainOnInputs: trainOnInputs))
        return (tok, ds, rows)
    }

    func checkIds(_ name: String) throws {
        let (_, ds, rows) = try load(name)
        XCTAssertEqual(ds.examples.count, rows.count)
        for (ex, row) in zip(ds.examples, rows) {
            XCTAssertEqual(ex.tokens, row.ids, "\(name) line \(ex.line): \(row.line)")
        }
    }

    func testQwen25ChatIdsEqualApplyChatTemplate() throws { try checkIds("qwen2.5") }
    func testQwen3ChatIdsEqualApplyChatTemplate() throws { try checkIds("qwen3") }
    func testLlama32ChatIdsEqualApplyChatTemplate() throws { try checkIds("llama3.2") }

    /// The decoded runs of trained tokens of chat 3 (two user/assistant turns).
    func trainedRuns(_ name: String, example: Int = 2) throws -> [String] {
        let (tok, ds, _) = try load(name)
        let ex = ds.examples[example]
        var runs: [String] = []
        var current: [Int32] = []
        for (id, c) in zip(ex.tokens, ex.counted) {
            if c { current.append(id) } else if !current.isEmpty { runs.append(try tok.decode(current, skipSpecialTokens: false)); current = [] }
        }
        if !current.isEmpty { runs.append(try tok.decode(current, skipSpecialTokens: false)) }
        return runs
    }

    func testQwen25MaskIsTheAssistantTurns() throws {
        XCTAssertEqual(try trainedRuns("qwen2.5"), ["First answer.<|im_end|>", "Second answer\nwith two lines.<|im_end|>"])
    }

    func testQwen3MaskIsTheAssistantTurns() throws {
        // The last turn is written with the empty think block the template adds to it.
        XCTAssertEqual(try trainedRuns("qwen3"), ["First answer.<|im_end|>", "<think>\n\n</think>\n\nSecond answer\nwith two lines.<|im_end|>"])
    }

    func testLlama32MaskIsTheAssistantTurns() throws {
        XCTAssertEqual(try trainedRuns("llama3.2"), ["First answer.<|eot_id|>", "Second answer\nwith two lines.<|eot_id|>"])
        // A tool turn between two assistant turns is not trained on.
        XCTAssertEqual(try trainedRuns("llama3.2", example: 8), ["Calling.<|eot_id|>", "The result is 42.<|eot_id|>"])
    }

    func testTrainOnInputsCountsEveryTokenButTheFirst() throws {
        let (_, ds, _) = try load("qwen2.5", trainOnInputs: true)
        for ex in ds.examples { XCTAssertEqual(ex.counted, [false] + Array(repeating: true, count: ex.tokens.count - 1)) }
    }

    /// eval --generate: the prompt is the generation-prompt rendering of the chat before the
    /// last assistant turn; the reply is that turn's content.
    func testReplyAndGenerationPrompt() throws {
        let (tok, ds, _) = try load("qwen2.5")
        let ex = ds.examples[2]
        XCTAssertEqual(ex.reply, "Second answer\nwith two lines.")
        let prompt = try tok.decode(ex.promptIds ?? [], skipSpecialTokens: false)
        XCTAssertTrue(prompt.hasSuffix("Second, please<|im_end|>\n<|im_start|>assistant\n"), prompt)
        XCTAssertEqual(Array(ex.tokens[..<ex.replyStart]), ex.promptIds)
    }

    func testUnknownRoleIsRefusedNamingTheLine() throws {
        let dir = try Self.folder("qwen2.5")
        let tok = try Self.tokenizer("qwen2.5")
        let path = try makeTempDir(self) + "/bad.jsonl"
        try Data("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n".utf8)
            .write(to: URL(fileURLWithPath: path))
        assertMoETuneError(try Dataset.load(path: path, tokenizer: tok, vocabSize: tok.vocabSize, options: try Self.options(dir)),
                           contains: ["bad.jsonl:2", "robot"])
    }

    /// SentencePiece with a Jinja template: the special-token strings the template writes
    /// (bos_token, eos_token) become their ids, not text.
    func testSentencePieceSplitsSpecialTokenStrings() throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir("llama"))
        let renderer = try ChatTemplateRenderer(template: "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %} {{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
                                                specialTokens: ["bos_token": "<s>", "eos_token": "</s>"])
        let enc = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        let ex = try enc.example([ChatMessage(role: "user", content: "hi"), ChatMessage(role: "assistant", content: "ok")],
                                 tools: .none, line: 1, task: nil, trainOnInputs: false)
        let bos = try XCTUnwrap(loaded.tokenizer.bosId), eos = try XCTUnwrap(loaded.tokenizer.eosId)
        XCTAssertEqual(ex.tokens.first, bos)
        XCTAssertEqual(ex.tokens.last, eos)
        XCTAssertEqual(ex.tokens.filter { $0 == bos || $0 == eos }.count, 2)
        XCTAssertEqual(ex.counted.last, true)
    }

    /// data.chat_template: null = the folder's template, "llama2" = the built-in format, a .jinja
    /// file = that template with the folder's special tokens, else a {user}/{assistant} turn.
    func testChatTemplateSettings() throws {
        let dir = try Self.folder("llama3.2")
        guard case .jinja = try ChatFormat.resolve(nil, modelDirectory: dir) else { return XCTFail("the folder's template") }
        guard case let .builtin(t) = try ChatFormat.resolve("llama2", modelDirectory: dir), t == .llama2 else { return XCTFail("llama2") }
        guard case let .builtin(c) = try ChatFormat.resolve("<|u|>{user}<|a|>{assistant}", modelDirectory: dir), c.turn != nil else { return XCTFail("custom") }
        guard case .builtin(.llama2) = try ChatFormat.resolve(nil, modelDirectory: Fixtures.dir("llama")) else { return XCTFail("no template: llama2") }
        let file = try makeTempDir(self) + "/t.jinja"
        try "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}".write(toFile: file, atomically: true, encoding: .utf8)
        guard case let .jinja(r) = try ChatFormat.resolve(file, modelDirectory: dir) else { return XCTFail(".jinja file") }
        XCTAssertEqual(try r.render([ChatMessage(role: "user", content: "x")]), "<|begin_of_text|>user: x<|end_of_text|>")
        assertMoETuneError(try ChatFormat.resolve(file + ".missing.jinja", modelDirectory: dir), contains: ["missing.jinja"])
        assertMoETuneError(try ChatFormat.resolve("no placeholders", modelDirectory: dir), contains: ["{user}"])
    }

    /// Llama 3.2: EOS is <|end_of_text|> but a turn ends with <|eot_id|>; generation stops at both.
    func testEndOfTurnIdComesFromTheTemplate() throws {
        let dir = try Self.folder("llama3.2")
        let tok = try Self.tokenizer("llama3.2")
        guard case let .jinja(r) = try ChatFormat.resolve(nil, modelDirectory: dir) else { return XCTFail("template") }
        XCTAssertEqual(ChatEncoder(renderer: r, tokenizer: tok).endOfTurnId(), tok.tokenId("<|eot_id|>"))
        XCTAssertNotEqual(tok.eosId, tok.tokenId("<|eot_id|>"))
    }
}
