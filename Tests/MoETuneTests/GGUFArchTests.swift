import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// GGUF models beyond the dense llama architecture, on the family fixtures converted by
/// llama.cpp's own convert_hf_to_gguf.py (scripts/make_gguf_arch_fixtures.py). Tolerances:
/// logits within 1e-4 absolute and loss within 1e-5 relative of transformers — on the HF
/// folder for the f32 files (the same reference.safetensors FamilyTests uses, or one
/// recomputed where llama.cpp cannot carry a feature: qwen2_moe without dense layers or
/// sliding windows, olmoe without clip_qkv and with the rms eps 1e-5 its converter writes,
/// seed_oss without o_proj bias, written by gguf-py: scripts/make_gguf_seedoss_fixture.py), and through transformers' own GGUF reader for
/// the f16 and q8_0 files (qwen3_moe's q8_0 experts kept in blocks, read per expert slice). Writing: `merge --format gguf` of each f32 file gives back the
/// same tensors (bit-exact in f32) and the same configuration.
final class GGUFArchTests: XCTestCase {
    static let dir = Fixtures.dir("gguf/arch")

    struct Case {
        var file: String
        var reference: String
        var family: ModelFamily
    }
    static let cases: [Case] = [
        Case(file: "mixtral", reference: Fixtures.dir("mixtral"), family: .mixtral),
        Case(file: "qwen2", reference: Fixtures.dir("qwen2"), family: .qwen2),
        Case(file: "qwen3", reference: Fixtures.dir("qwen3"), family: .qwen3),
        Case(file: "qwen2_moe", reference: dir + "/qwen2_moe", family: .qwen2MoE),
        Case(file: "qwen3_moe", reference: Fixtures.dir("qwen3_moe"), family: .qwen3MoE),
        Case(file: "olmoe", reference: dir + "/olmoe", family: .olmoe),
        Case(file: "granitemoe", reference: Fixtures.dir("granitemoe"), family: .graniteMoE),
        Case(file: "seed_oss", reference: dir + "/seed_oss", family: .seedOss),
        Case(file: "llama3-rope", reference: Fixtures.dir("llama3-rope"), family: .llama),
        Case(file: "llama-yarn", reference: Fixtures.dir("llama-yarn"), family: .llama),
        Case(file: "llama-linear", reference: Fixtures.dir("llama-linear"), family: .llama),
        Case(file: "qwen2-f16", reference: dir + "/qwen2-f16", family: .qwen2),
        Case(file: "qwen2-q8_0", reference: dir + "/qwen2-q8_0", family: .qwen2),
        Case(file: "qwen3_moe-q8_0", reference: dir + "/qwen3_moe-q8_0", family: .qwen3MoE),
    ]

    static func referenceFile(_ c: Case) throws -> SafeTensorsFile {
        let own = c.reference + ".reference.safetensors"
        return try SafeTensorsFile(path: FileManager.default.fileExists(atPath: own) ? own : c.reference + "/reference.safetensors")
    }

    func check(_ model: Transformer, _ ref: SafeTensorsFile, _ name: String) throws { try checkLogits(model, ref, name) }
}

extension XCTestCase {
    /// Logits (max |diff| over unmasked positions) and loss of `model` on a reference batch.
    func checkLogits(_ model: Transformer, _ ref: SafeTensorsFile, _ name: String) throws {
        let shape = ref.shape("input_ids")
        let (b, t) = (shape[0], shape[1])
        let ids = try ref.intArray("input_ids"), mask = try ref.intArray("attention_mask")
        var targets = [Int32](repeating: -1, count: b * t)
        for i in 0..<b { for j in 0..<(t - 1) where mask[i * t + j + 1] == 1 { targets[i * t + j] = ids[i * t + j + 1] } }
        let lengths = (0..<b).map { i in (0..<t).filter { mask[i * t + $0] == 1 }.count }
        let tb = TokenBatch(batch: b, seq: t, ids: ids, targets: targets, lengths: lengths)
        let state = ForwardState(config: model.config, batch: b, seq: t, training: false)
        let (sum, count) = try model.forward(tb, state: state)
        let loss = sum / Double(count), refLoss = Double(try ref.floatArray("loss")[0])
        let logits = try ref.floatArray("logits"), v = model.config.vocabSize
        var worst: Float = 0
        for (pos, m) in mask.enumerated() where m == 1 {
            for j in 0..<v { worst = max(worst, abs(state.logits[pos * v + j] - logits[pos * v + j])) }
        }
        print("\(name).gguf: logits max |diff| \(worst), loss \(loss) vs transformers \(refLoss)")
        XCTAssertLessThanOrEqual(worst, 1e-4, name)
        XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, name)
    }
}

extension GGUFArchTests {
    func testArchitecturesMatchTransformers() throws {
        for c in Self.cases {
            let model = try Transformer.load(directory: Self.dir + "/" + c.file + ".gguf")
            XCTAssertEqual(model.config.family, c.family, c.file)
            try check(model, try Self.referenceFile(c), c.file)
            if c.file.hasSuffix("-q8_0") {
                // Block weights stay in their format, each expert a slice of the 3-D tensor.
                XCTAssertEqual(model.layers[1].q.ggml?.type, .q8_0, c.file)
                if model.config.isMoE {
                    XCTAssertEqual(model.layers[1].experts[7].down.ggml?.type, .q8_0, c.file)
                    XCTAssertEqual(model.layers[0].experts[3].gate.ggml?.type, .q8_0, c.file)
                }
            }
        }
    }

    /// `eval` on the GGUF file alone (its SentencePiece tokenizer from `tokenizer.ggml.*`)
    /// equals transformers' eval loss on the HF folder (sentencepiece ids), 1e-5 relative.
    func testEvalWithTheGGUFTokenizerMatchesTransformers() throws {
        for c in Self.cases where !c.reference.hasPrefix(Self.dir) {
            let loaded = try LoadedModel.load(directory: Self.dir + "/" + c.file + ".gguf")
            let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer,
                                      vocabSize: loaded.model.config.vocabSize, options: DataOptions())
            let r = try Evaluator.evaluate(model: loaded.model, dataset: ds, batchSize: 3)
            let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: c.reference + "/reference.json"))) as! [String: Any]
            let want = (ref["eval_loss"] as! NSNumber).doubleValue
            print("\(c.file).gguf eval: \(r.loss) vs transformers \(want), \(r.tokens) tokens")
            XCTAssertEqual(r.tokens, (ref["eval_tokens"] as! NSNumber).intValue, c.file)
            XCTAssertLessThanOrEqual(abs(r.loss - want) / want, 1e-5, c.file)
        }
    }

    /// The configuration read from the GGUF metadata equals the one config.json gives,
    /// field by field, where the file was converted from that folder unchanged.
    func testConfigsEqualTheHuggingFaceFolders() throws {
        for c in Self.cases where c.reference.hasPrefix(Fixtures.root + "/") && !c.reference.hasPrefix(Self.dir) {
            let g = try Checkpoint(directory: Self.dir + "/" + c.file + ".gguf").config
            let h = try ModelConfig.load(directory: c.reference)
            let name = c.file
            XCTAssertEqual(g.family, h.family, name)
            XCTAssertEqual(g.numExperts, h.numExperts, name)
            XCTAssertEqual(g.expertsPerToken, h.expertsPerToken, name)
            if h.isMoE {
                XCTAssertEqual(g.expertIntermediateSize, h.expertIntermediateSize, name)
                XCTAssertEqual(g.normTopKProb, h.normTopKProb, name)
                XCTAssertEqual(g.sharedExpertIntermediateSize, h.sharedExpertIntermediateSize, name)
                XCTAssertEqual(g.mlpOnlyLayers, h.mlpOnlyLayers, name)
            } else {
                XCTAssertEqual(g.intermediateSize, h.intermediateSize, name)
            }
            XCTAssertEqual(g.qkvBias, h.qkvBias, name)
            XCTAssertEqual(g.qkNorm, h.qkNorm, name)
            XCTAssertEqual(g.headDim, h.headDim, name)
            XCTAssertEqual(g.tieWordEmbeddings, h.tieWordEmbeddings, name)
            XCTAssertEqual(g.embeddingMultiplier, h.embeddingMultiplier, name)
            XCTAssertEqual(g.attentionMultiplier, h.attentionMultiplier, name)
            XCTAssertEqual(g.residualMultiplier, h.residualMultiplier, name)
            XCTAssertEqual(g.logitsScaling, h.logitsScaling, name)
            XCTAssertEqual(g.rmsNormEps, h.rmsNormEps, accuracy: 1e-12, name)
            if case .llama3? = h.ropeScaling {
                guard case .frequencyFactors(let f)? = g.ropeScaling else { return XCTFail("\(name): rope_freqs.weight not read") }
                XCTAssertEqual(f.count, h.headDim / 2)
                // What writing an HF llama3 config gives equals what llama.cpp's converter wrote.
                let ours = try XCTUnwrap(h.family.ggufRopeFrequencyFactors(h))
                for (a, b) in zip(ours, f) { XCTAssertEqual(Double(a), b, accuracy: 1e-6 * b, "\(name) rope_freqs") }
            } else if case let .yarn(factor, original, fast, slow, attention, _)? = h.ropeScaling {
                guard case let .yarn(f2, o2, fa2, s2, a2, _)? = g.ropeScaling else { return XCTFail("\(name): yarn not read") }
                XCTAssertEqual([factor, original, fast, slow], [f2, o2, fa2, s2], name)
                XCTAssertEqual(attention, a2, accuracy: 1e-12, name)
            } else {
                XCTAssertEqual(g.ropeScaling, h.ropeScaling, name)
            }
        }
    }

    /// `merge --format gguf` without adapters writes every f32 file back: the same tensor
    /// names, shapes and types, bit-identical values, and a configuration that reads the same.
    func testWriteReadRoundTrip() throws {
        let tmp = try makeTempDir(self)
        for c in Self.cases where !c.file.contains("-f16") && !c.file.contains("-q8_0") {
            let src = Self.dir + "/" + c.file + ".gguf", out = tmp + "/" + c.file + ".gguf"
            _ = try GGUFExport.mergedModel(model: src, adapters: [], out: out, type: .f32, overwrite: false)
            let a = try GGUFFile(path: src), b = try GGUFFile(path: out)
            XCTAssertEqual(Set(a.tensors.map(\.name)), Set(b.tensors.map(\.name)), c.file)
            for t in a.tensors {
                guard let u = b.tensor(t.name) else { continue }
                XCTAssertEqual(u.shape, t.shape, "\(c.file) \(t.name)")
                XCTAssertEqual(u.type, t.type, "\(c.file) \(t.name)")
                let x = try a.floats(t.name), y = try b.floats(t.name)
                XCTAssertTrue(x.elementsEqual(y) { $0.bitPattern == $1.bitPattern }, "\(c.file) \(t.name) differs")
            }
            let ca = try ModelFamily.config(gguf: a), cb = try ModelFamily.config(gguf: b)
            XCTAssertEqual(cb.family, ca.family, c.file)
            XCTAssertEqual([cb.numExperts, cb.expertsPerToken, cb.expertIntermediateSize, cb.sharedExpertIntermediateSize, cb.intermediateSize],
                           [ca.numExperts, ca.expertsPerToken, ca.expertIntermediateSize, ca.sharedExpertIntermediateSize, ca.intermediateSize], c.file)
            XCTAssertEqual(cb.normTopKProb, ca.normTopKProb, c.file)
            XCTAssertEqual(cb.qkvBias, ca.qkvBias, c.file)
            XCTAssertEqual(cb.qkNorm, ca.qkNorm, c.file)
            XCTAssertEqual(cb.ropeScaling, ca.ropeScaling, c.file)
            XCTAssertEqual([cb.embeddingMultiplier, cb.residualMultiplier, cb.logitsScaling, cb.attentionMultiplier ?? 0],
                           [ca.embeddingMultiplier, ca.residualMultiplier, ca.logitsScaling, ca.attentionMultiplier ?? 0], c.file)
        }
    }

    /// A LoRA on every linear kind, experts included, trained on a GGUF MoE base (f32, and q8_0
    /// whose experts stay in blocks and are read per expert slice), merged into the stacked
    /// ffn_*_exps tensors of an f32 GGUF: its loss equals eval --adapter's (1e-5 relative).
    func testMergedMoEAdapterMatchesEvalAdapter() throws {
        for file in ["qwen3_moe", "qwen3_moe-q8_0"] {
            let tmp = try makeTempDir(self)
            let base = Self.dir + "/" + file + ".gguf"
            let cfgPath = Fixtures.root + "/../../../configs/demo.yaml"
            let cfg = try TrainConfig.load(path: cfgPath,
                                           overrides: ["model=\(base)", "training.max_steps=4", "training.out_dir=\(tmp)/lora",
                                                       "data.train=\(Fixtures.dir("eval.jsonl"))", "data.valid=null", "data.test=null",
                                                       "training.eval_every=0", "optimizer.lr=0.02", "schedule.warmup_steps=0",
                                                       "training.batch_size=2"])
            _ = try Trainer(config: cfg, configPath: cfgPath).run()
            func evalLoss(_ model: String, adapter: String? = nil) throws -> Double {
                let loaded = try LoadedModel.load(directory: model)
                let ds = try Dataset.load(path: Fixtures.dir("eval.jsonl"), tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, options: DataOptions())
                let set = try adapter.map { try PEFTAdapter.load(directory: $0, model: loaded.model) }
                return try Evaluator.evaluate(model: loaded.model, adapters: set, dataset: ds, batchSize: 3).loss
            }
            let withAdapter = try evalLoss(base, adapter: tmp + "/lora"), baseLoss = try evalLoss(base)
            XCTAssertGreaterThan(abs(withAdapter - baseLoss), 1e-3, "\(file): the adapter changes the model")
            let s = try GGUFExport.mergedModel(model: base, adapters: [(tmp + "/lora", 1)], out: tmp + "/m.gguf", type: .f32, overwrite: false)
            XCTAssertGreaterThan(s.mergedModules, 2 * 3 * 8, "\(file): expert modules merged")
            let merged = try evalLoss(tmp + "/m.gguf")
            print("\(file) merged f32: \(merged) vs eval --adapter \(withAdapter) (base \(baseLoss))")
            XCTAssertLessThanOrEqual(abs(merged - withAdapter) / withAdapter, 1e-5, file)
            assertMoETuneError(try GGUFExport.loraAdapter(model: base, adapter: tmp + "/lora", out: tmp + "/a.gguf", overwrite: false),
                               contains: ["experts.", "expert"])
        }
    }

    /// seed_oss: q/k/v biases read, rows not permuted (NEOX RoPE), the MLP norm under
    /// post_attention_norm; a model with an o_proj bias is not written (llama.cpp has no
    /// attn_output.bias for seed_oss), and moe-tune's own names are gguf-py's.
    func testSeedOss() throws {
        let f = try GGUFFile(path: Self.dir + "/seed_oss.gguf")
        let c = try ModelFamily.config(gguf: f)
        XCTAssertEqual(c.family, .seedOss)
        XCTAssertTrue(c.qkvBias)
        XCTAssertFalse(c.oBias)
        XCTAssertEqual([c.headDim, c.numHeads, c.numKVHeads, c.intermediateSize], [16, 4, 2, 96])
        let names = ModelFamily.seedOss.ggufTensorNames(c)
        XCTAssertEqual(Set(names.map(\.gguf)), Set(f.tensors.map(\.name)))
        XCTAssertTrue(names.allSatisfy { $0.permuteHeads == nil })
        XCTAssertNotNil(f.tensor("blk.1.post_attention_norm.weight"))
        let tmp = try makeTempDir(self)
        assertMoETuneError(try GGUFExport.mergedModel(model: Fixtures.dir("seed_oss"), adapters: [], out: tmp + "/s.gguf", type: .f32, overwrite: false),
                           contains: ["attention_out_bias", "seed_oss", "attn_output.bias"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/s.gguf"))
    }

    func testRefusals() throws {
        let tmp = try makeTempDir(self)
        let src = try GGUFFile(path: Self.dir + "/qwen3_moe.gguf")
        func write(_ name: String, _ edit: (inout GGUFWriter) -> Void) throws -> String {
            var w = GGUFWriter()
            for k in src.keys { w.set(k, src.metadata[k]!) }
            edit(&w)
            try w.write(to: tmp + "/" + name)
            return tmp + "/" + name
        }
        assertMoETuneError(try LoadedModel.load(directory: try write("a.gguf") { $0.set("general.architecture", .string("phi3")) }),
                           contains: ["a.gguf", "'phi3'", "supported: llama, qwen2, qwen3, qwen2moe, qwen3moe, olmoe, granitemoe"])
        assertMoETuneError(try LoadedModel.load(directory: try write("b.gguf") { $0.set("qwen3moe.expert_used_count", .uint32(9)) }),
                           contains: ["b.gguf", "'qwen3moe.expert_used_count'", "exceeds"])
        assertMoETuneError(try LoadedModel.load(directory: try write("c.gguf") { $0.set("qwen3moe.expert_count", .uint32(0)) }),
                           contains: ["c.gguf", "'qwen3moe.expert_count'"])
        assertMoETuneError(try LoadedModel.load(directory: try write("d.gguf") { $0.set("qwen3moe.rope.scaling.type", .string("longrope")) }),
                           contains: ["d.gguf", "'qwen3moe.rope.scaling.type'", "longrope"])
        assertMoETuneError(try LoadedModel.load(directory: try write("e.gguf") { $0.set("qwen3moe.expert_count", .string("8")) }),
                           contains: ["e.gguf", "'qwen3moe.expert_count'", "integer"])
        assertMoETuneError(try LoadedModel.load(directory: try write("f.gguf") { _ in }),
                           contains: ["f.gguf", "'token_embd.weight'", "missing"])
        assertMoETuneError(try LoadedModel.load(directory: try write("g.gguf") { $0.set("qwen2.expert_count", .uint32(4)); $0.set("general.architecture", .string("qwen2")) }),
                           contains: ["g.gguf", "'qwen2.expert_count'"])
    }
}
