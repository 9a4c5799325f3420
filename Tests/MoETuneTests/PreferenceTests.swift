import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// DPO and ORPO (training.method) against TRL 1.16.0 (transformers 5.25.0, peft 0.21.2, torch
/// 2.13.0+cpu; scripts/make_dpo_fixtures.py, Fixtures/dpo-llama and dpo-qwen2_moe): on a fixed
/// batch of 3 pairs with a peft adapter whose B is non-zero, the loss within 1e-5 relative,
/// TRL's metrics within 1e-5 and every LoRA gradient within 1e-4 (max-norm per tensor) for
/// the losses sigmoid, ipo, hinge, robust, sigmoid with label smoothing (conservative DPO) and
/// ORPO. On qwen2_moe, TRL's DPO loss includes router_aux_loss_coef x the load-balancing loss
/// (checked too). Then: precompute_ref equals the in-step reference, a stopped and resumed DPO run equals
/// the uninterrupted one bit for bit, bad data lines are refused naming file and line.
final class PreferenceTests: XCTestCase {
    static let families = ["llama", "qwen2_moe"]
    static let trlVersion = "1.16.0"

    func pairs(_ dir: String) throws -> [PreferenceExample] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/batch.json"))
        let list = try JSONSerialization.jsonObject(with: data) as! [[String: [Int]]]
        return list.enumerated().map { i, p in
            PreferenceExample(prompt: p["prompt"]!.map(Int32.init), chosen: p["chosen"]!.map(Int32.init),
                              rejected: p["rejected"]!.map(Int32.init), line: i + 1)
        }
    }

    func objective(_ meta: [String: Any]) -> PreferenceObjective {
        let beta = meta["beta"] as! Double
        guard meta["method"] as! String == "dpo" else { return PreferenceObjective(method: .orpo, orpoBeta: beta) }
        var d = TrainConfig.DPOSection()
        d.beta = beta
        d.loss = TrainConfig.DPOLossName(rawValue: meta["loss"] as! String)!
        d.labelSmoothing = meta["label_smoothing"] as! Double
        return PreferenceObjective(method: .dpo, dpo: d)
    }

    /// moe-tune's loss, metrics and gradients of one fixture case; returns (loss error, worst gradient error).
    @discardableResult
    func checkCase(_ family: String, _ name: String) throws -> (Double, Double) {
        let dir = Fixtures.dir("dpo-" + family)
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/meta.json"))) as! [String: Any]
        XCTAssertEqual(meta["trl"] as? String, Self.trlVersion)
        let obj = objective((meta["cases"] as! [String: Any])[name] as! [String: Any])
        let ref32 = try SafeTensorsFile(path: dir + "/\(name).safetensors")
        // MoE DPO: TRL adds the model's router_aux_loss_coef x the policy forward's aux loss.
        let auxCoef = ref32.tensors["aux_coef"] != nil ? Double(try ref32.floatArray("aux_coef")[0]) : 0
        let model = try Transformer.load(directory: Fixtures.dir(family))
        model.moe.auxLossCoef = Float(auxCoef)
        let adapters = try PEFTAdapter.load(directory: dir, model: model)
        let batch = PreferenceBatch(try pairs(dir), chosenPromptTargets: obj.method == .orpo)
        let state = ForwardState(config: model.config, batch: batch.tokens.batch, seq: batch.tokens.seq, training: true,
                                 loraRank: adapters.maxRank, headChunkRows: nil)
        state.scoredOnly = true
        let step = try PreferenceStep(model: model, state: state)
        let ref = obj.needsReference ? try step.reference(batch, adapters: nil) : nil
        adapters.store.zeroGrads()
        let r = try step.run(batch, adapters: adapters, objective: obj, reference: ref, pairScale: 1 / Double(batch.pairs),
                             nllScale: 1 / Double(PreferenceObjective.nllTokens([batch])), auxScale: 1)
        var (loss, metrics) = obj.summary([r])
        if auxCoef != 0 {
            let refAux = Double(try ref32.floatArray("aux_loss")[0])
            XCTAssertLessThanOrEqual(abs(state.auxLoss - refAux) / refAux, 1e-5, "\(family) \(name) aux loss \(state.auxLoss) vs TRL \(refAux)")
            loss += auxCoef * state.auxLoss
        }
        let refLoss = Double(try ref32.floatArray("loss")[0])
        let lossErr = abs(loss - refLoss) / abs(refLoss)
        XCTAssertLessThanOrEqual(lossErr, 1e-5, "\(family) \(name) loss \(loss) vs TRL \(refLoss)")
        let keys = ref32.tensors.keys.filter { $0.hasPrefix("metric:") }
        XCTAssertGreaterThanOrEqual(keys.count, 6, "\(family) \(name)")
        for key in keys {
            let k = String(key.dropFirst("metric:".count)), expected = Double(try ref32.floatArray(key)[0])
            guard let ours = metrics[k] else { XCTFail("\(family) \(name): no metric \(k)"); continue }
            XCTAssertLessThanOrEqual(abs(ours - expected), 1e-5 * max(1, abs(expected)), "\(family) \(name) \(k) \(ours) vs TRL \(expected)")
        }
        var worst = 0.0
        for a in adapters.all {
            for (suffix, ptr, n) in [("lora_A", a.gradA, a.rank * a.inFeatures), ("lora_B", a.gradB, a.rank * a.outFeatures)] {
                let key = "base_model.model.\(a.module).\(suffix).weight"
                let expected = try ref32.floatArray(key)
                XCTAssertEqual(expected.count, n, key)
                let scale = Double(expected.map { abs($0) }.max() ?? 0)
                var diff = 0.0
                for i in 0..<n { diff = max(diff, Double(abs(ptr[i] - expected[i]))) }
                let err = scale > 0 ? diff / scale : diff
                worst = max(worst, err)
                XCTAssertLessThanOrEqual(err, 1e-4, "\(family) \(name) \(key)")
            }
        }
        XCTAssertEqual(2 * adapters.all.count, ref32.tensors.keys.filter { $0.hasPrefix("base_model.") }.count)
        print("\(family) \(name): loss \(loss) vs TRL \(refLoss) (rel \(lossErr)), worst LoRA gradient error \(worst)")
        return (lossErr, worst)
    }

    func testDPOSigmoidMatchesTRL() throws { for f in Self.families { try checkCase(f, "sigmoid") } }
    func testDPOIPOMatchesTRL() throws { for f in Self.families { try checkCase(f, "ipo") } }
    func testDPOHingeMatchesTRL() throws { for f in Self.families { try checkCase(f, "hinge") } }
    func testDPORobustMatchesTRL() throws { for f in Self.families { try checkCase(f, "robust") } }
    func testConservativeDPOMatchesTorch() throws { for f in Self.families { try checkCase(f, "cdpo") } }
    func testORPOMatchesTRL() throws { for f in Self.families { try checkCase(f, "orpo") } }
}

// MARK: Runs

extension PreferenceTests {
    /// A preference data file of `n` pairs, a DPO config on the Mixtral fixture.
    func setUpRun(_ dir: String, method: String = "dpo", extra: String = "", n: Int = 12) throws -> String {
        var text = ""
        for i in 0..<n {
            text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"chosen\": \" \(2 * i + 1)\", \"rejected\": \" \(2 * i + 3) or so\"}\n"
        }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/prefs.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data:
          train: \(dir)/prefs.jsonl
        lora:
          rank: 4
          targets: [query, value, mlp]
        optimizer:
          lr: 1.0e-2
        training:
          method: \(method)
          batch_size: 2
          max_seq_len: 32
          out_dir: \(dir)/out
        \(extra)
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    @discardableResult
    func train(_ path: String, overrides: [String] = [], resume: Bool = false, stopAfter: Int? = nil) throws -> TrainSummary {
        let cfg = try TrainConfig.load(path: path, overrides: overrides)
        var events = TrainerEvents()
        var steps = 0
        events.step = { _ in steps += 1 }
        events.shouldStop = { stopAfter.map { steps >= $0 } ?? false }
        return try Trainer(config: cfg, configPath: path).run(resume: resume, events: events)
    }

    func stepLines(_ dir: String) throws -> [[String: Any]] {
        try MetricsLog.read(path: dir + "/out/metrics.jsonl").filter { $0["type"] as? String == "step" }
    }

    func adapterWeights(_ dir: String) throws -> [Float] {
        let f = try SafeTensorsFile(path: dir + "/out/adapter_model.safetensors")
        return try f.tensors.keys.sorted().flatMap { try f.floatArray($0) }
    }

    /// training.recompute: layers gives DPO and ORPO runs the adapter and metrics of none, bit for bit.
    func testRecomputeIsBitIdentical() throws {
        for method in ["dpo", "orpo"] {
            let a = try makeTempDir(self), b = try makeTempDir(self)
            try train(try setUpRun(a, method: method, extra: "  epochs: 1"))
            try train(try setUpRun(b, method: method, extra: "  epochs: 1\n  recompute: layers"))
            let lines = (try stepLines(a), try stepLines(b))
            XCTAssertEqual(lines.0.count, 6, method)
            for (x, y) in zip(lines.0, lines.1) {
                for key in x.keys where key != "elapsed_s" && !key.hasSuffix("_per_s") {
                    XCTAssertEqual("\(x[key]!)", "\(y[key].map { "\($0)" } ?? "nil")", "\(method) \(key)")
                }
            }
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: a + "/out/adapter_model.safetensors")),
                           try Data(contentsOf: URL(fileURLWithPath: b + "/out/adapter_model.safetensors")), method)
        }
    }

    /// dpo.precompute_ref: the reference computed once before training gives the run the
    /// in-step reference gives (one epoch, so every pair's reference comes from the same
    /// micro-batch either way): losses and metrics within 1e-6, the adapter within 1e-6.
    func testPrecomputedReferenceEqualsInStep() throws {
        let a = try makeTempDir(self), b = try makeTempDir(self)
        try train(try setUpRun(a, extra: "  epochs: 1\ndpo:\n  beta: 0.2"))
        try train(try setUpRun(b, extra: "  epochs: 1\ndpo:\n  beta: 0.2\n  precompute_ref: true"))
        let la = try stepLines(a), lb = try stepLines(b)
        XCTAssertEqual(la.count, 6)
        XCTAssertEqual(la.count, lb.count)
        var worst = 0.0
        for (x, y) in zip(la, lb) {
            for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "rewards/accuracies"] {
                let u = x[key] as! Double, v = y[key] as! Double
                worst = max(worst, abs(u - v))
                XCTAssertLessThanOrEqual(abs(u - v), 1e-6, key)
            }
        }
        let wa = try adapterWeights(a), wb = try adapterWeights(b)
        let wdiff = zip(wa, wb).map { Double(abs($0 - $1)) }.max() ?? 0
        XCTAssertLessThanOrEqual(wdiff, 1e-6)
        print("precompute_ref vs in-step: metrics max |diff| \(worst), adapter max |diff| \(wdiff)")
    }

    /// A DPO run stopped after step 2 and resumed writes the adapter and metrics of an
    /// uninterrupted run, bit for bit (grad_accum 2, LoRA dropout, router jitter).
    func testStoppedAndResumedDPORunEqualsUninterrupted() throws {
        let extra = "  grad_accum: 2\n  max_steps: 4\ndpo:\n  loss: ipo\nmoe:\n  jitter: 0.01"
        let a = try makeTempDir(self), b = try makeTempDir(self)
        try train(try setUpRun(a, extra: extra), overrides: ["lora.dropout=0.1"])
        let cb = try setUpRun(b, extra: extra)
        XCTAssertEqual(try train(cb, overrides: ["lora.dropout=0.1"], stopAfter: 2).stoppedAt, 2)
        XCTAssertEqual(try train(cb, overrides: ["lora.dropout=0.1"], resume: true).resumedFrom, 2)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: a + "/out/adapter_model.safetensors")),
                       try Data(contentsOf: URL(fileURLWithPath: b + "/out/adapter_model.safetensors")))
        let la = try stepLines(a), lb = try stepLines(b)
        XCTAssertEqual(la.map { $0["step"] as! Int }, [1, 2, 3, 4])
        XCTAssertEqual(la.map { $0["loss"] as! Double }, lb.map { $0["loss"] as! Double })
        XCTAssertEqual(la.map { $0["rewards/margins"] as! Double }, lb.map { $0["rewards/margins"] as! Double })
    }

    /// ORPO trains (loss falls over a few steps) and logs TRL's ORPO names; pairs held out
    /// (data.valid_split) are evaluated at the start, every eval_every steps and at the end.
    func testORPORunLogsTRLNames() throws {
        let a = try makeTempDir(self)
        let summary = try train(try setUpRun(a, method: "orpo", extra: "  max_steps: 6\n  eval_every: 3\norpo:\n  beta: 0.2"),
                                overrides: ["data.valid_split=4"])
        let evals = try MetricsLog.read(path: a + "/out/metrics.jsonl").filter { $0["type"] as? String == "eval" }
        XCTAssertEqual(evals.map { $0["step"] as! Int }, [0, 3, 6])
        XCTAssertEqual(evals.map { $0["pairs"] as! Int }, [4, 4, 4])
        XCTAssertNotNil(evals.last?["log_odds_ratio"])
        XCTAssertEqual(summary.lastValidLoss, evals.last?["loss"] as? Double)
        XCTAssertLessThan(summary.lastValidLoss!, summary.firstValidLoss!)
        let lines = try stepLines(a)
        for key in ["nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/accuracies", "logps/rejected"] {
            XCTAssertNotNil(lines.last?[key], key)
        }
        XCTAssertLessThan(lines.last!["loss"] as! Double, lines.first!["loss"] as! Double)
        let text = try String(contentsOfFile: a + "/out/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(text.contains("\"rewards/chosen\""), "TRL's names are written with their slash")
        let report = try String(contentsOfFile: a + "/out/report.html", encoding: .utf8)
        XCTAssertTrue(report.contains("Reward accuracy"))
    }

    /// Bad preference lines: one-line errors naming the file and line.
    func testBadPreferenceDataNamesFileAndLine() throws {
        let loaded = try LoadedModel.load(directory: Fixtures.dir("llama"))
        let dir = try makeTempDir(self)
        func load(_ text: String, maxSeqLen: Int = 64) throws -> PreferenceDataset {
            let path = dir + "/p.jsonl"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return try PreferenceDataset.load(path: path, tokenizer: loaded.tokenizer, vocabSize: loaded.model.config.vocabSize, maxSeqLen: maxSeqLen)
        }
        let good = "{\"prompt\": \"a b\", \"chosen\": \"c\", \"rejected\": \"d\"}\n"
        assertMoETuneError(try load(good + "{\"prompt\": \"a\", \"rejected\": \"d\"}\n"), contains: ["p.jsonl:2", "missing field \"chosen\""])
        assertMoETuneError(try load(good + "{\"prompt\": \"a\", \"chosen\": \"c\"}\n"), contains: ["p.jsonl:2", "missing field \"rejected\""])
        assertMoETuneError(try load("{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \"d\"}\n"), contains: ["p.jsonl:1", "\"chosen\" is empty"])
        assertMoETuneError(try load(good + good + "{\"prompt\": \"a\", \"chosen\": \"c\", \"rejected\": 3}\n"), contains: ["p.jsonl:3", "\"rejected\" must be a string"])
        let long = "{\"prompt\": \"" + Array(repeating: "word", count: 40).joined(separator: " ") + "\", \"chosen\": \"c\", \"rejected\": \"d\"}\n"
        assertMoETuneError(try load(good + long, maxSeqLen: 16), contains: ["p.jsonl:2", "max_seq_len 16"])
        // Completions longer than the room left are cut (counted), not refused.
        let cut = try load("{\"prompt\": \"a\", \"chosen\": \"" + Array(repeating: "word", count: 40).joined(separator: " ") + "\", \"rejected\": \"d\"}\n", maxSeqLen: 16)
        XCTAssertEqual(cut.truncated, 1)
        XCTAssertEqual(cut.examples[0].prompt.count + cut.examples[0].chosen.count, 16)
    }

    /// The method's keys: a dpo section needs method dpo; the resolved config reads back; an
    /// SFT config renders as before (no method, no dpo section).
    func testPreferenceConfig() throws {
        let dir = try makeTempDir(self)
        let path = try setUpRun(dir, extra: "dpo:\n  beta: 0.3\n  loss: hinge")
        let c = try TrainConfig.load(path: path)
        XCTAssertEqual(c.training.method, .dpo)
        XCTAssertEqual(c.dpo.loss, .hinge)
        XCTAssertEqual(try TrainConfig.parse(c.resolvedYAML(), path: "resolved"), c)
        assertMoETuneError(try TrainConfig.load(path: path, overrides: ["training.method=sft"]), contains: ["dpo.beta", "method is sft"])
        assertMoETuneError(try TrainConfig.load(path: path, overrides: ["dpo.label_smoothing=0.1"]), contains: ["dpo.label_smoothing", "hinge"])
        assertMoETuneError(try TrainConfig.load(path: path, overrides: ["dpo.loss=kto"]), contains: ["dpo.loss"])
        let sft = try TrainConfig.load(path: path, overrides: ["training.method=sft", "dpo=null"])
        XCTAssertFalse(sft.resolvedYAML().contains("method:"), sft.resolvedYAML())
        XCTAssertFalse(sft.resolvedYAML().contains("\ndpo:"), sft.resolvedYAML())
    }
}

// MARK: Tokenization

extension PreferenceTests {
    /// String and conversational lines tokenize into the prompt, chosen and rejected ids TRL 1.16's
    /// DPOTrainer makes (Fixtures/dpo-chat, Qwen2.5's tokenizer and chat template): the pair cut
    /// where prompt and prompt + completion part, EOS (<|im_end|>) ending string completions.
    func testPairsTokenizeAsTRL() throws {
        let dir = try makeTempDir(self) + "/chat-model"
        try FileManager.default.copyItem(atPath: Fixtures.dir("chat-model"), toPath: dir)
        try TokenizerJSONTests.xz(dir + "/tokenizer.json.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        let loaded = try LoadedModel.load(directory: dir)
        guard case let .jinja(renderer) = try ChatFormat.resolve(nil, modelDirectory: dir) else { return XCTFail("no Jinja template") }
        let chat = ChatEncoder(renderer: renderer, tokenizer: loaded.tokenizer)
        let ds = try PreferenceDataset.load(path: Fixtures.dir("dpo-chat/data.jsonl"), tokenizer: loaded.tokenizer,
                                            vocabSize: loaded.model.config.vocabSize, maxSeqLen: 512, chat: chat)
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.dir("dpo-chat/tokenized.json")))) as! [String: Any]
        XCTAssertEqual(ref["trl"] as? String, Self.trlVersion)
        let lines = ref["lines"] as! [[String: [Int]]]
        XCTAssertEqual(ds.examples.count, lines.count)
        for (ex, r) in zip(ds.examples, lines) {
            XCTAssertEqual(ex.prompt.map(Int.init), r["prompt_ids"], "line \(ex.line) prompt")
            XCTAssertEqual(ex.chosen.map(Int.init), r["chosen_ids"], "line \(ex.line) chosen")
            XCTAssertEqual(ex.rejected.map(Int.init), r["rejected_ids"], "line \(ex.line) rejected")
        }
        // Message lists without a Jinja template: refused naming the line.
        assertMoETuneError(try PreferenceDataset.load(path: Fixtures.dir("dpo-chat/data.jsonl"), tokenizer: loaded.tokenizer,
                                                      vocabSize: loaded.model.config.vocabSize, maxSeqLen: 512),
                           contains: ["data.jsonl:3", "chat template"])
    }
}

// MARK: init_adapter

extension PreferenceTests {
    /// SFT, then DPO from its adapter (training.init_adapter): the adapter keeps the SFT run's
    /// rank and targets (the lora section is not used), and the reference is the SFT adapter
    /// (TRL's "ref" copy of a pretrained adapter), so the first step starts at zero rewards and
    /// the sigmoid loss ln 2.
    func testDPOStartsFromAnSFTAdapter() throws {
        let dir = try makeTempDir(self)
        let path = try setUpRun(dir, extra: "  max_steps: 3")
        var text = ""
        for i in 0..<8 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/sft.jsonl"))
        try train(path, overrides: ["training.method=sft", "data.train=\(dir)/sft.jsonl", "lora.rank=2", "training.out_dir=\(dir)/sft"])
        try train(path, overrides: ["training.init_adapter=\(dir)/sft", "lora.rank=8"])
        let lines = try stepLines(dir)
        XCTAssertEqual(lines.count, 3)
        XCTAssertEqual(lines[0]["rewards/chosen"] as? Double, 0)
        XCTAssertEqual(lines[0]["rewards/margins"] as? Double, 0)
        XCTAssertEqual(lines[0]["loss"] as! Double, log(2), accuracy: 1e-12)
        XCTAssertNotEqual(lines[2]["rewards/margins"] as? Double, 0)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(config["r"] as? Int, 2)
        assertMoETuneError(try TrainConfig.load(path: path, overrides: ["training.init_adapter=\(dir)/nowhere"]),
                           contains: ["training.init_adapter", "adapter_config.json"])
    }
}

// MARK: Data parallel

extension MPITests {
    /// DPO over 2 ranks (Open MPI) equals one process with grad_accum 2: the adapter within 1e-5
    /// relative, the step losses and TRL's metrics within 1e-5 (sums in another order).
    func testDPORanksEqualOneProcess() throws {
        let mpirun = try requireMPI()
        let dir = try makeTempDir(self)
        var text = ""
        for i in 0..<16 { text += "{\"prompt\": \"Add \(i) and \(i + 3).\", \"chosen\": \" \(2 * i + 3)\", \"rejected\": \" \(2 * i + 5)!\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/prefs.jsonl"))
        func config(_ name: String, gradAccum: Int) throws -> String {
            let yaml = """
            model: \(Fixtures.dir("mixtral"))
            data: {train: \(dir)/prefs.jsonl, valid_split: 4}
            lora: {rank: 4, dropout: 0.1, targets: [query, value, mlp]}
            moe: {jitter: 0.01}
            optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
            schedule: {name: constant}
            training: {method: dpo, batch_size: 2, grad_accum: \(gradAccum), max_steps: 4, max_seq_len: 32, eval_every: 2, out_dir: \(dir)/\(name)}
            dpo: {beta: 0.2}
            """
            try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/\(name).yaml"))
            return dir + "/\(name).yaml"
        }
        XCTAssertEqual(try runMoETune(["train", "--config", try config("single", gradAccum: 2)]).status, 0)
        let p = try startMPI(mpirun, ranks: 2, ["train", "--config", try config("multi", gradAccum: 1)], dir: dir)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, output(dir))
        try assertSameAdapter(dir + "/single", dir + "/multi", relative: 1e-5)
        let single = try MetricsLog.read(path: dir + "/single/metrics.jsonl"), multi = try MetricsLog.read(path: dir + "/multi/metrics.jsonl")
        XCTAssertEqual(single.count, multi.count)
        for (a, b) in zip(single, multi) {
            for key in ["loss", "rewards/chosen", "rewards/margins", "logps/rejected", "grad_norm"] {
                guard let u = a[key] as? Double, let v = b[key] as? Double else { continue }
                XCTAssertEqual(u, v, accuracy: 1e-5 * max(1, abs(u)), key)
            }
        }
        XCTAssertEqual(multi.filter { $0["type"] as? String == "step" }.first?["ranks"] as? Int, 2)
    }
}
