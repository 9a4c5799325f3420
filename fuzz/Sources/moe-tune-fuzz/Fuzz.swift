// libFuzzer entry points over moe-tune's input parsers. One binary, one target per run:
// MOE_TUNE_FUZZ_TARGET picks it (scripts/fuzz.sh sets it), MOE_TUNE_FUZZ_FIXTURES points at
// Tests/MoETuneTests/Fixtures. A thrown error is a normal outcome for a bad input; only
// crashes, traps, sanitizer reports, timeouts and running out of memory are findings.
// Built only by scripts/fuzz.sh (MOE_TUNE_FUZZ=1, swiftc -sanitize=fuzzer,address).
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links a debug executable with `--defsym main=<module>_main` (so that tests can
/// import it), which replaces libFuzzer's own main: this one hands over to libFuzzer's driver.
/// Where no such alias is made, libFuzzer's main runs and this function is unused.
@_cdecl("moe_tune_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzOne($0, $1) }
}

enum FuzzTarget: String, CaseIterable {
    case safetensors, peft, jsonl, yaml, tokenizer, template, gguf
}

/// Per-process state set up once in LLVMFuzzerInitialize.
nonisolated(unsafe) var target = FuzzTarget.safetensors
nonisolated(unsafe) var workDir = ""
nonisolated(unsafe) var spTokenizer: (any TextTokenizer)?
nonisolated(unsafe) var adapterModel: Transformer?

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("moe-tune-fuzz: \(message)\n".utf8))
    exit(2)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    let env = ProcessInfo.processInfo.environment
    guard let name = env["MOE_TUNE_FUZZ_TARGET"], let t = FuzzTarget(rawValue: name) else {
        fail("set MOE_TUNE_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    target = t
    let fixtures = env["MOE_TUNE_FUZZ_FIXTURES"] ?? "Tests/MoETuneTests/Fixtures"
    // Inputs that are files go through a private folder (in memory where /dev/shm exists).
    let tmpRoot = FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    workDir = "\(tmpRoot)/moe-tune-fuzz-\(t.rawValue)-\(getpid())"
    try? FileManager.default.removeItem(atPath: workDir)
    do {
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
        switch t {
        case .jsonl:
            spTokenizer = try Tokenizer(path: fixtures + "/llama/tokenizer.model")
        case .peft:
            // The real adapter weights beside each fuzzed adapter_config.json, for the real model.
            adapterModel = try Transformer.load(directory: fixtures + "/mixtral")
            try FileManager.default.copyItem(atPath: fixtures + "/train-mixtral/adapter_model.safetensors",
                                             toPath: workDir + "/adapter_model.safetensors")
        default: break
        }
    } catch {
        fail("setup for \(t.rawValue) failed: \(error)")
    }
    atexit { try? FileManager.default.removeItem(atPath: workDir) }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Data(bytes: data!, count: size) : Data()
    switch target {
    case .safetensors: fuzzSafeTensors(bytes)
    case .peft: fuzzPEFT(bytes)
    case .jsonl: fuzzJSONL(bytes)
    case .yaml: fuzzYAML(bytes)
    case .tokenizer: fuzzTokenizerJSON(bytes)
    case .template: fuzzTemplate(bytes)
    case .gguf: fuzzGGUF(bytes)
    }
    return 0
}

func writeInput(_ bytes: Data, _ name: String) -> String {
    let path = workDir + "/" + name
    guard FileManager.default.createFile(atPath: path, contents: bytes) else { fail("cannot write \(path)") }
    return path
}

/// A whole safetensors file: header length, JSON header, data. Every tensor it accepts is
/// read and converted, as the model loader does.
func fuzzSafeTensors(_ bytes: Data) {
    let path = writeInput(bytes, "model.safetensors")
    guard let file = try? SafeTensorsFile(path: path) else { return }
    for name in file.tensors.keys.sorted() {
        let info = file.tensors[name]!
        let raw = file.bytes(of: info)
        precondition(raw.count == info.byteCount && info.count * info.dtype.size == info.byteCount)
        guard info.count <= 1 << 20 else { continue }
        var out = [Float](repeating: 0, count: info.count)
        if info.count > 0, let src = raw.baseAddress {
            _ = out.withUnsafeMutableBufferPointer { FloatConversion.toFloat(src, dtype: info.dtype, count: info.count, into: $0.baseAddress!) }
        }
        file.release(info)
    }
}

/// A whole GGUF file: header, metadata, tensor infos, data. Every tensor it accepts is
/// dequantized; then it is opened as a model and as a tokenizer, as `--model FILE.gguf` does.
func fuzzGGUF(_ bytes: Data) {
    let path = writeInput(bytes, "model.gguf")
    guard let file = try? GGUFFile(path: path) else { return }
    for t in file.tensors where t.count <= 1 << 20 {
        precondition(t.byteCount == t.type.bytes(count: t.count) && t.offset + t.byteCount <= bytes.count)
        _ = try? file.floats(t.name)
    }
    _ = try? Checkpoint(directory: path)
    _ = try? TokenizerLoader.load(directory: path)
}

/// adapter_config.json beside the real adapter_model.safetensors of the Mixtral fixture.
func fuzzPEFT(_ bytes: Data) {
    _ = writeInput(bytes, "adapter_config.json")
    _ = try? PEFTAdapter.load(directory: workDir, model: adapterModel!)
}

/// A JSONL data file tokenized with the fixture SentencePiece tokenizer. The first byte picks
/// the options (train_on_inputs, a custom chat template, a short max_seq_len).
func fuzzJSONL(_ bytes: Data) {
    guard let flags = bytes.first else { return }
    let path = writeInput(bytes.dropFirst(), "data.jsonl")
    let template = flags & 2 != 0 ? ChatTemplate(turn: "<|user|>\n{user}\n<|assistant|>\n{assistant}\n") : .llama2
    let options = DataOptions(maxSeqLen: flags & 4 != 0 ? 8 : 512, trainOnInputs: flags & 1 != 0, chatTemplate: template)
    let tok = spTokenizer!
    guard let ds = try? Dataset.load(path: path, tokenizer: tok, vocabSize: tok.vocabSize, options: options) else { return }
    for ex in ds.examples {
        precondition(ex.tokens.count == ex.counted.count && ex.tokens.count <= options.maxSeqLen)
    }
    _ = lengthGroupedBatches(ds.examples, batchSize: 2)
}

/// A training config as `moe-tune train --config` reads it, then its resolved YAML read back.
func fuzzYAML(_ bytes: Data) {
    let text = String(decoding: bytes, as: UTF8.self)
    guard let cfg = try? TrainConfig.parse(text, path: "fuzz.yaml") else { return }
    let resolved = cfg.resolvedYAML()
    do { _ = try TrainConfig.parse(resolved, path: "resolved.yaml") } catch {
        // A config that was accepted must read back from its own resolved form.
        fatalError("resolved config does not parse: \(error)\n\(resolved)")
    }
}

let tokenizerTexts = [
    "Hello, world! The capital of Varnia is Oskel. 3 plus 4 is 7.",
    "  leading spaces\ttabs\nnewlines\r\n  ünïcödé 日本語 🙂 <|im_start|>user<|im_end|> <s></s>",
    "",
]

/// tokenizer.json: load, encode fixed texts with and without offsets, decode the ids.
func fuzzTokenizerJSON(_ bytes: Data) {
    let path = writeInput(bytes, "tokenizer.json")
    guard let tok = try? HFTokenizer(path: path) else { return }
    for text in tokenizerTexts {
        guard let ids = try? tok.encode(text, addSpecialTokens: true) else { continue }
        _ = try? tok.encodeWithOffsets(text)
        _ = try? tok.decode(ids)
        _ = try? tok.decode(ids, skipSpecialTokens: false)
    }
}

let chat: [ChatMessage] = [
    ChatMessage(role: "system", content: "You are terse."),
    ChatMessage(role: "user", content: "What is the capital of Varnia?"),
    ChatMessage(role: "assistant", content: "Oskel", reasoningContent: "It is a fact I was told."),
    ChatMessage(role: "user", content: "And 3 plus 4?"),
    ChatMessage(role: "assistant", content: nil),
]

/// A Jinja chat template: parse, render the chat with and without the generation prompt,
/// and find the assistant spans as training does.
func fuzzTemplate(_ bytes: Data) {
    let source = String(decoding: bytes, as: UTF8.self)
    guard var r = try? ChatTemplateRenderer(template: source, specialTokens: ["bos_token": "<s>", "eos_token": "</s>"]) else { return }
    r.now = { Date(timeIntervalSince1970: 1_700_000_000) }
    _ = try? r.render(chat, addGenerationPrompt: false)
    _ = try? r.generationPrompt(Array(chat.prefix(2)))
    if let (text, spans) = try? r.renderWithAssistantSpans(Array(chat.prefix(4))) {
        let n = text.utf8.count
        for s in spans { precondition(s.lowerBound >= 0 && s.upperBound <= n, "assistant span \(s) outside \(n) bytes") }
    }
}
