import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining

/// training.recompute: layers (activation recomputation per decoder layer): training with it
/// gives the same adapter and losses, bit for bit, as without; the state it allocates and the
/// memory estimate are smaller; a batch refused for memory that would fit with it says so.
final class RecomputeTests: XCTestCase {
    func writeData(_ dir: String) throws {
        var text = ""
        for i in 0..<12 { text += "{\"prompt\": \"Add \(i) and \(i + 1).\", \"completion\": \" \(2 * i + 1) is the sum\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
    }

    /// Trains 3 steps (grad_accum 2) with `recompute`; returns the adapter file's bytes and the
    /// step and eval lines' numbers.
    func train(_ model: String, dir: String, recompute: String, extra: String) throws -> (adapter: Data, numbers: [[Double]]) {
        let out = dir + "/out-" + recompute
        let yaml = """
        model: \(Fixtures.dir(model))
        data: {train: \(dir)/train.jsonl, valid: \(dir)/train.jsonl}
        lora: {rank: 4, targets: [query, key, value, projection, mlp]\(extra.contains("dropout") ? ", dropout: 0.1" : "")}
        optimizer: {lr: 1.0e-2}
        training: {batch_size: 3, grad_accum: 2, max_steps: 3, eval_every: 2, max_seq_len: 24, out_dir: \(out), recompute: \(recompute)}
        \(extra.contains("jitter") ? "moe: {jitter: 0.05, noise_std: 0.5, z_loss_coef: 0.01}" : "")
        """
        let path = dir + "/\(recompute).yaml"
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: path))
        let config = try TrainConfig.load(path: path)
        XCTAssertEqual(config.training.recompute.rawValue, recompute)
        _ = try Trainer(config: config, configPath: path).run()
        let metrics = try MetricsLog.read(path: out + "/metrics.jsonl")
        let numbers = metrics.filter { ["step", "eval"].contains($0["type"] as? String) }.map { line in
            ["loss", "grad_norm", "aux_loss", "z_loss", "valid_loss"].compactMap { line[$0] as? Double }
        }
        XCTAssertTrue(try String(contentsOfFile: out + "/config.yaml", encoding: .utf8).contains("recompute: \(recompute)"))
        return (try Data(contentsOf: URL(fileURLWithPath: out + "/adapter_model.safetensors")), numbers)
    }

    func checkBitIdentical(_ model: String, extra: String = "") throws {
        let dir = try makeTempDir(self)
        try writeData(dir)
        let none = try train(model, dir: dir, recompute: "none", extra: extra)
        let layers = try train(model, dir: dir, recompute: "layers", extra: extra)
        XCTAssertEqual(none.numbers.count, 6, "3 steps, 3 evaluations (start, step 2, end)")
        XCTAssertEqual(none.numbers, layers.numbers, "\(model): losses and gradient norms")
        XCTAssertTrue(none.adapter == layers.adapter, "\(model): the adapters differ")
    }

    // MoE: routed experts with LoRA, router jitter and noise, z-loss, LoRA dropout.
    func testMixtralRecomputeIsBitIdentical() throws { try checkBitIdentical("mixtral", extra: "jitter dropout") }
    // Dense.
    func testLlamaRecomputeIsBitIdentical() throws { try checkBitIdentical("llama") }
    // q/k norms (Qwen3), MLA (DeepSeek-V2), shared expert (Qwen2-MoE), clip_qkv (OLMoE),
    // residual multiplier (Granite), sinks and clamped SwiGLU (GPT-OSS).
    func testOtherFamiliesRecomputeIsBitIdentical() throws {
        for model in ["qwen3_moe", "deepseek_v2", "qwen2_moe", "olmoe", "granitemoe", "gpt_oss"] { try checkBitIdentical(model) }
    }

    /// Floats of every FloatBuffer reachable from `roots` (each buffer once).
    func allocatedFloats(_ roots: Any...) -> Int {
        var seen = Set<ObjectIdentifier>(), total = 0
        func walk(_ value: Any) {
            if let b = value as? FloatBuffer {
                if seen.insert(ObjectIdentifier(b)).inserted { total += b.count }
                return
            }
            let mirror = Mirror(reflecting: value)
            if mirror.displayStyle == .class, !seen.insert(ObjectIdentifier(value as AnyObject)).inserted { return }
            for child in mirror.children { walk(child.value) }
        }
        for r in roots { walk(r) }
        return total
    }

    /// The state a recomputing run allocates is smaller than without, and the estimate (an
    /// upper bound of what the states allocate, within 1.5x) shrinks with it.
    func testRecomputeKeepsLessAndTheEstimateCountsIt() throws {
        for name in ["mixtral", "llama", "qwen3_moe", "deepseek_v2", "qwen2_moe", "olmoe", "granitemoe", "gpt_oss"] {
            let c = try ModelConfig.load(directory: Fixtures.dir(name))
            XCTAssertGreaterThanOrEqual(c.numLayers, 2, name)
            let rows = 2, seq = 48, rank = 8, chunk = 40
            var allocated: [Bool: Double] = [:], estimated: [Bool: Double] = [:]
            for recompute in [false, true] {
                let s = ForwardState(config: c, batch: rows, seq: seq, training: true, loraRank: rank, jitter: c.isMoE,
                                     headChunkRows: chunk, recompute: recompute)
                let g = BackwardState(for: s, config: c)
                XCTAssertEqual(s.layers.count, recompute ? 1 : c.numLayers, name)
                allocated[recompute] = 4 * Double(allocatedFloats(s, g))
                estimated[recompute] = MemoryEstimate.trainingBytes(config: c, rows: rows, seq: seq, headChunkRows: chunk,
                                                                   recompute: recompute, loraRank: rank, jitter: c.isMoE)
                XCTAssertGreaterThanOrEqual(estimated[recompute]!, allocated[recompute]!, "\(name) recompute \(recompute)")
                XCTAssertLessThanOrEqual(estimated[recompute]!, 1.5 * allocated[recompute]!, "\(name) recompute \(recompute)")
            }
            XCTAssertLessThan(allocated[true]!, allocated[false]!, name)
            XCTAssertLessThan(estimated[true]!, estimated[false]!, name)
        }
    }

    /// Qwen3-30B-A3B's shapes (config.json of Qwen/Qwen3-30B-A3B, SmolLM2's vocabulary as in
    /// ../shared/peer/make_big_gguf.py): 8,192 tokens without recomputation need more than a
    /// 24 GB machine; with it, a few GB, most of it the layers' inputs.
    func testRealScaleEstimate() throws {
        let json = """
        {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
         "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144,
         "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
         "vocab_size": 49152, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": false}
        """
        let c = try ModelConfig.parse(Data(json.utf8), path: "config.json")
        let chunk = ForwardState.defaultHeadChunkRows(vocab: c.vocabSize)
        func gb(_ seq: Int, _ recompute: Bool) -> Double {
            MemoryEstimate.trainingBytes(config: c, rows: 1, seq: seq, headChunkRows: chunk, recompute: recompute, loraRank: 16) / 1e9
        }
        XCTAssertGreaterThan(gb(8192, false), 24)
        XCTAssertLessThan(gb(8192, true), 12)
        XCTAssertLessThan(gb(4096, true), 6)
        // The layers' inputs are most of what is kept per token with recomputation.
        XCTAssertGreaterThan(Double(c.numLayers * c.hiddenSize), 0.5 * MemoryEstimate.layerFloats(c, dense: false, moe: true, loraRank: 16, jitter: false))
    }

    /// The refusal names the estimate, and adds the recompute hint only when that would fit.
    func testRefusalSaysWhenRecomputeWouldFit() {
        let room = [(what: "of this machine's memory", left: 24e9)]
        XCTAssertNil(MemoryEstimate.refusal(batch: "a batch", needed: 20e9, recomputed: 5e9, lower: "x", room: room))
        let hint = MemoryEstimate.refusal(batch: "a batch of 1 sequences of up to 8192 tokens", needed: 45e9, recomputed: 9e9,
                                          lower: "training.max_seq_len", room: room)
        XCTAssertEqual(hint, "a batch of 1 sequences of up to 8192 tokens needs about 45.0 GB of activations, more than 24.0 GB of this machine's memory; "
                       + "lower training.max_seq_len, or set training.recompute: layers (estimate 9.0 GB)")
        let none = MemoryEstimate.refusal(batch: "b", needed: 45e9, recomputed: 30e9, lower: "y", room: room)
        XCTAssertEqual(none, "b needs about 45.0 GB of activations, more than 24.0 GB of this machine's memory; lower y")
        // Already recomputing: no hint.
        XCTAssertFalse(MemoryEstimate.refusal(batch: "b", needed: 45e9, recomputed: nil, lower: "y", room: room)!.contains("recompute"))
        // A second limit the recomputed estimate exceeds: no hint.
        let two = room + [(what: "left under the cgroup memory limit", left: 8e9)]
        XCTAssertFalse(MemoryEstimate.refusal(batch: "b", needed: 45e9, recomputed: 9e9, lower: "y", room: two)!.contains("recompute"))
    }

    /// The machine's room is its memory less the anonymous memory the process holds (the
    /// model's fp32 parts), read from PROC/status.
    func testRoomLeavesWhatTheProcessHolds() throws {
        let proc = try makeTempDir(self)
        try Data("Name:\tmoe-tune\nRssAnon:\t  2000000 kB\nRssFile:\t 9000000 kB\n".utf8)
            .write(to: URL(fileURLWithPath: proc + "/status"))
        XCTAssertEqual(MemoryEstimate.statusBytes("RssAnon", proc: proc), 2_048_000_000)
        let physical = try XCTUnwrap(MemoryEstimate.physicalBytes)
        let room = try XCTUnwrap(MemoryEstimate.activationRoom(proc: proc).first)
        XCTAssertEqual(room.left, physical - 2_048_000_000)
        XCTAssertEqual(room.what, "left of this machine's \(MemoryEstimate.format(physical)) beside the 2.0 GB this process already holds")
    }

    /// End to end: a batch over the address-space limit (ulimit -v) that would fit with
    /// recomputation is refused before training with the hint; with training.recompute: layers
    /// the same batch passes the check and trains (not killed). The limit is set between the
    /// two estimates, read from the refusals under a limit that refuses both.
    func testRefusalUnderALimitHintsRecompute() throws {
        let dir = try makeTempDir(self)
        var text = ""
        for _ in 0..<64 { text += #"{"prompt": ""# + (0..<100).map { "w\($0)" }.joined(separator: " ") + #"", "completion": " x"}"# + "\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/long.jsonl"))
        let repo = Fixtures.root + "/../../.."
        func run(_ recompute: String, limitKB: Int) throws -> (status: Int32, last: String) {
            let args = ["train", "--config", repo + "/configs/demo.yaml", "--set", "model=\(repo)/data/demo-model",
                        "--set", "data.train=\(dir)/long.jsonl", "--set", "data.valid=null", "--set", "data.test=null",
                        "--set", "training.batch_size=64", "--set", "training.max_seq_len=512", "--set", "training.max_steps=1",
                        "--set", "training.recompute=\(recompute)", "--set", "training.out_dir=\(dir)/out-\(recompute)-\(limitKB)"]
            let (status, err) = try runMoeTuneUnderAddressLimit(args, limitKB: limitKB, timeout: 300, dir: dir)
            XCTAssertFalse(err.contains("Fatal error"), err)
            return (status, String(err.split(separator: "\n").last ?? ""))
        }
        func gb(_ line: String, after: String, before: String) -> Double? {
            guard let a = line.range(of: after), let b = line.range(of: before, range: a.upperBound..<line.endIndex) else { return nil }
            return Double(line[a.upperBound..<b.lowerBound])
        }
        let tight = 800_000
        let none = try run("none", limitKB: tight), layers = try run("layers", limitKB: tight)
        for r in [none, layers] {
            XCTAssertEqual(r.status, 1, r.last)
            XCTAssertTrue(r.last.contains("training.batch_size: a batch of 64 sequences of up to "), r.last)
            XCTAssertTrue(r.last.contains("left under the address-space limit (ulimit -v)"), r.last)
            XCTAssertFalse(r.last.contains("set training.recompute"), r.last)
        }
        let needNone = try XCTUnwrap(gb(none.last, after: "needs about ", before: " GB of activations"))
        let needLayers = try XCTUnwrap(gb(layers.last, after: "needs about ", before: " GB of activations"))
        let used = try XCTUnwrap(gb(none.last, after: "GB, ", before: " GB of it in use"))
        XCTAssertLessThan(needLayers, needNone - 0.2, none.last + "\n" + layers.last)
        let limit = Int((used + MemoryEstimate.processMargin / 1e9 + (needNone + needLayers) / 2) * 1e6)
        let hinted = try run("none", limitKB: limit)
        XCTAssertEqual(hinted.status, 1, hinted.last)
        XCTAssertTrue(hinted.last.contains(", or set training.recompute: layers (estimate "), hinted.last)
        let trained = try run("layers", limitKB: limit)
        XCTAssertEqual(trained.status, 0, trained.last)
    }
}
