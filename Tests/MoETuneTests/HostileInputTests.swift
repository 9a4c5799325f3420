import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Findings of a hostile probe: numbers, names and sizes from files that used to trap,
/// exhaust memory or be taken silently; each is a one-line refusal naming the file and key now.
final class HostileInputTests: XCTestCase {
    let model = #"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#

    func tokenizerDir(_ json: String, files: [String: String] = [:]) throws -> String {
        let dir = try makeTempDir(self)
        try Data(json.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        for (name, text) in files { try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/" + name)) }
        return dir
    }

    /// D2: an added token `"id": 4294967296` trapped `Int32(...)` (exit 132). Every token id a
    /// tokenizer file gives is checked before the conversion: added tokens, post-processor
    /// ids, generation_config.json's eos_token_id, the vocabulary.
    func testTokenIdsFromFilesAreCheckedNotTrapped() throws {
        for id in ["4294967296", "-1", "16777216", "9223372036854775807"] {
            let added = try tokenizerDir(#"{"model": \#(model), "added_tokens": [{"id": \#(id), "content": "<x>", "special": true}]}"#)
            assertMoETuneError(try HFTokenizer(directory: added), contains: [added + "/tokenizer.json", "added_tokens[0].id", "id \(id) is outside 0..<16777216"])
            let roberta = try tokenizerDir(#"{"model": \#(model), "post_processor": {"type": "RobertaProcessing", "cls": ["a", \#(id)], "sep": ["b", 1]}}"#)
            assertMoETuneError(try HFTokenizer(directory: roberta), contains: ["post_processor.cls", "id \(id) is outside"])
            let template = try tokenizerDir(#"""
                {"model": \#(model), "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "a"}}, {"Sequence": {"id": "A"}}],
                 "special_tokens": {"a": {"id": "a", "ids": [\#(id)], "tokens": ["a"]}}}}
                """#)
            assertMoETuneError(try HFTokenizer(directory: template), contains: ["post_processor.special_tokens.a.ids", "id \(id) is outside"])
            let generation = try tokenizerDir(#"{"model": \#(model)}"#, files: ["generation_config.json": #"{"eos_token_id": [1, \#(id)]}"#])
            assertMoETuneError(try HFTokenizer(directory: generation), contains: [generation + "/generation_config.json", "eos_token_id[1]", "outside"])
            let vocab = try tokenizerDir(#"{"model": {"type": "BPE", "vocab": {"a": \#(id)}, "merges": []}}"#)
            assertMoETuneError(try HFTokenizer(directory: vocab), contains: ["model.vocab[\"a\"]", "id \(id) is outside"])
        }
        // The command line: one line, exit 1, no trap.
        let dir = try tokenizerDir(#"{"model": \#(model), "added_tokens": [{"id": 4294967296, "content": "<x>"}]}"#,
                                   files: ["d.jsonl": #"{"text": "ab"}"# + "\n"])
        let r = try runMoETune(["tokenize", "--model", dir, "--data", dir + "/d.jsonl"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertEqual(r.err, "moe-tune: error: \(dir)/tokenizer.json: added_tokens[0].id: id 4294967296 is outside 0..<16777216\n")
    }

    /// config.json's bos/eos ids and a GGUF's token ids went through `Int32(...)` too (2^32
    /// trapped; a list element was truncated to 0 silently).
    func testModelConfigTokenIdsAreChecked() throws {
        for (key, value) in [("eos_token_id", 4294967296 as Any), ("eos_token_id", [2, 4294967296] as Any), ("bos_token_id", 4294967296 as Any)] {
            let dir = try copyFixture("llama", self)
            let path = dir + "/config.json"
            var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            json[key] = value
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
            assertMoETuneError(try ModelConfig.load(directory: dir), contains: [path, key, "4294967296", "outside"])
        }
    }

    /// A `%.NNN…f` precision too long for an Int overflowed while it was read.
    func testPercentFormatPrecisionDoesNotOverflow() throws {
        assertMoETuneError(try JinjaTemplate(#"{{ "%.99999999999999999999999f" % 1.5 }}"#).render([:]), contains: ["format precision too large"])
    }

    // MARK: D3: weighted mixes

    func mixConfig(_ dir: String, weight: String) throws -> String {
        var text = ""
        for i in 0..<200 { text += "{\"prompt\": \"Add \(i) and 1.\", \"completion\": \" \(i + 1)\"}\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/small.jsonl"))
        let yaml = """
        model: \(Fixtures.dir("mixtral"))
        data: {train: [{path: \(dir)/small.jsonl, weight: \(weight)}]}
        lora: {rank: 4, targets: [query, value]}
        training: {batch_size: 4, max_steps: 2, max_seq_len: 32, out_dir: \(dir)/out}
        """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/c.yaml"))
        return dir + "/c.yaml"
    }

    /// D3: `weight: 10000000` built a whole epoch's draw list (16 GB) even for max_steps 2;
    /// `weight: 1e15` asked for 1.6e17 bytes. A weight past 1e6 is refused at load naming the
    /// key; a smaller one whose epoch would draw more than 2^24 examples is refused before
    /// anything is listed.
    func testHugeMixWeightsAreRefusedBeforeAnyMemoryIsTaken() throws {
        let dir = try makeTempDir(self)
        for w in ["10000000", "1e15", "1e300"] {
            let c = try mixConfig(dir, weight: w)
            assertMoETuneError(try TrainConfig.load(path: c), contains: [c, "data.train[0].weight", "draws of each example an epoch"])
        }
        let c = try mixConfig(dir, weight: "100000")
        assertMoETuneError(try Trainer(config: try TrainConfig.load(path: c), configPath: c).run(),
                           contains: [c, "data.train[0].weight", "20000000 examples an epoch", "more than 4194304"])
        let r = try runMoETune(["train", "--config", try mixConfig(dir, weight: "10000000")])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(dir)/c.yaml: data.train[0].weight: line 2: 10000000.0 is more than 1000000 draws"), r.err)
        // A large but bounded weight trains its two steps.
        let ok = try mixConfig(dir, weight: "500")
        XCTAssertEqual(try Trainer(config: try TrainConfig.load(path: ok), configPath: ok).run().steps, 2)
    }

    /// The plan lays out a window of micro-batches at a time (not a whole epoch): the same
    /// batches, in order, across window and epoch boundaries and going back.
    func testBatchPlanWindowsGiveTheEpochsBatches() {
        let examples = (0..<1500).map { i in
            Example(tokens: [Int32](repeating: 5, count: 3 + i % 7), counted: [false] + [Bool](repeating: true, count: 2 + i % 7), line: i + 1, promptLength: 1)
        }
        let mix = WeightedMix(files: [(Array(0..<500), 2.5), (Array(500..<1500), 1.0)])
        for packing in [nil, PackingPlan(rowTokens: 32, rows: 2)] {
            let plan = BatchPlan(examples: examples, mix: mix, batchSize: 2, packing: packing, seed: 3)
            let e0 = plan.batches(epoch: 0), e1 = plan.batches(epoch: 1)
            XCTAssertGreaterThan(e0.count, 2 * BatchPlan.window)
            for m in Array(0..<(e0.count + 10)) + [5, e0.count + 1, 2 * BatchPlan.window + 1] {
                let rows = m < e0.count ? e0[m] : e1[m - e0.count]
                XCTAssertEqual(plan.microBatch(m).ids, TokenBatch(rows: rows, of: examples, packed: packing != nil).ids, "m \(m)")
            }
        }
    }

    // MARK: D7: silently wrong

    /// `generate` with an adapter of NaN values printed garbage and exited 0; eval and merge
    /// refused it late. One check when any adapter is loaded refuses it naming the tensor.
    func testANaNAdapterIsRefusedByGenerateEvalAndMerge() throws {
        let dir = try makeTempDir(self)
        let bad = try HostileSizeTests.nanAdapter(dir)
        let mixtral = Fixtures.dir("mixtral")
        for args in [["generate", "--model", mixtral, "--adapter", bad.dir, "--prompt", "Add 2 and 3.", "--max-new-tokens", "4"],
                     ["eval", "--model", mixtral, "--adapter", bad.dir, "--data", Fixtures.dir("eval.jsonl")],
                     ["merge", "--model", mixtral, "--adapter", bad.dir, "--out", dir + "/m"],
                     ["merge", "--model", Fixtures.dir("gguf/arch/mixtral.gguf"), "--adapter", bad.dir, "--format", "gguf", "--out", dir + "/m.gguf"]] {
            let r = try runMoETune(args)
            XCTAssertEqual(r.status, 1, "\(args[0]): \(r.err)")
            XCTAssertEqual(r.err, "moe-tune: error: \(bad.dir)/adapter_model.safetensors: tensor '\(bad.tensor)' holds a non-finite value (element 0 is nan); "
                + "the adapter is damaged (a diverged run?): train it again or use an earlier checkpoint\n")
            XCTAssertEqual(r.out, "", args[0])
        }
        // A --weight of nan or inf (or one that takes B past the float range) is refused too.
        for w in ["nan", "inf"] {
            let r = try runMoETune(["generate", "--model", mixtral, "--adapter", Fixtures.dir("train-mixtral"), "--weight", w,
                                    "--prompt", "Add 2 and 3.", "--max-new-tokens", "4"])
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.contains("gives a non-finite value") && r.err.contains("--weight"), r.err)
        }
    }

    func editJSON(_ path: String, _ edit: (inout [String: Any]) -> Void) throws {
        var json = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]) ?? [:]
        edit(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    }

    /// config.json `eos_token_id: -5` and tokenizer_config.json `eos_token: 5` dropped EOS
    /// from every example (exit 0); `chat_template: 5` was ignored for the built-in format.
    func testBadEOSAndChatTemplateValuesAreRefusedNamingFileAndKey() throws {
        let llama = try copyFixture("llama", self)
        try editJSON(llama + "/config.json") { $0["eos_token_id"] = -5 }
        assertMoETuneError(try ModelConfig.load(directory: llama), contains: [llama + "/config.json", "eos_token_id", "id -5 is outside"])
        try editJSON(llama + "/config.json") { $0["eos_token_id"] = [2, 1_000_000] }
        assertMoETuneError(try ModelConfig.load(directory: llama), contains: [llama + "/config.json", "eos_token_id", "1000000 is outside the vocabulary (vocab_size"])
        let r = try runMoETune(["tokenize", "--model", llama, "--data", Fixtures.dir("eval.jsonl")])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(llama)/config.json: eos_token_id: id 1000000 is outside the vocabulary"), r.err)

        let chat = try copyFixture("chat-model", self)
        let tc = chat + "/tokenizer_config.json"
        try editJSON(tc) { $0["eos_token"] = 5 }
        assertMoETuneError(try TokenizerLoader.load(directory: unpacked(chat)), contains: [tc, "eos_token", "must be a token string", "5"])
        assertMoETuneError(try ChatTemplateRenderer.load(modelDirectory: chat), contains: [tc, "eos_token", "must be a token string"])
        try editJSON(tc) { $0["eos_token"] = ["content": 7] }
        assertMoETuneError(try ChatTemplateRenderer.load(modelDirectory: chat), contains: [tc, "eos_token"])
        try editJSON(tc) { $0["eos_token"] = "</s>"; $0["chat_template"] = 5 }
        assertMoETuneError(try ChatTemplateRenderer.load(modelDirectory: chat), contains: [tc, "chat_template", "must be a string or a list", "int '5'"])
        assertMoETuneError(try ChatFormat.resolve(nil, modelDirectory: chat), contains: [tc, "chat_template"])
    }

    /// The chat-model fixture with its tokenizer.json unpacked.
    func unpacked(_ dir: String) throws -> String {
        if !FileManager.default.fileExists(atPath: dir + "/tokenizer.json") {
            try TokenizerJSONTests.xz(dir + "/tokenizer.json.xz").write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        }
        return dir
    }

    // MARK: D8: divergence without NaN

    /// The demo model and data (configs/demo.yaml) with `overrides`.
    func demoRun(_ dir: String, _ overrides: [String]) throws -> (config: TrainConfig, path: String) {
        let repo = Fixtures.root + "/../../.."
        let path = repo + "/configs/demo.yaml"
        let c = try TrainConfig.load(path: path, overrides: [
            "model=\(repo)/data/demo-model", "data.train=\(repo)/data/train.jsonl", "data.valid=null", "data.test=null",
            "training.out_dir=\(dir)/out", "optimizer.grad_clip=null"] + overrides)
        return (c, path)
    }

    /// D8: `optimizer.lr: 1e30` with `grad_clip: null` exited 0 with a destroyed adapter (B ~
    /// 3.9e30, loss stuck at ln V, gradient norm 0): the guard saw only NaN and inf. An adapter
    /// weight past 1e4 stops the run now naming the learning rate, with the adapter from before
    /// the update saved and the last checkpoint kept.
    func testAHugeLearningRateStopsTheRunNamingIt() throws {
        let dir = try makeTempDir(self)
        let (c, path) = try demoRun(dir, ["optimizer.lr=1e30", "training.max_steps=4"])
        assertMoETuneError(try Trainer(config: c, configPath: path).run(),
                           contains: [path, "optimizer.lr", "training diverged at step 1", "more than 10000.0 in magnitude",
                                      "the learning rate is most likely too high", "grad_clip", "saved in \(dir)/out"])
        let loaded = try LoadedModel.load(directory: c.model)
        let set = try PEFTAdapter.load(directory: dir + "/out", model: loaded.model)
        XCTAssertTrue(set.all.allSatisfy { a in (0..<(a.outFeatures * a.rank)).allSatisfy { a.b[$0] == 0 } }, "the adapter from before step 1 (B = 0)")
        // The command line: exit 1, one line.
        let r = try runMoETune(["train", "--config", path, "--set", "model=\(c.model)", "--set", "data.train=\(c.data.train)",
                                "--set", "data.valid=null", "--set", "data.test=null", "--set", "training.out_dir=\(dir)/cli",
                                "--set", "optimizer.lr=1e30", "--set", "optimizer.grad_clip=null", "--set", "training.max_steps=4"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("moe-tune: error: \(path): optimizer.lr: training diverged at step 1"), r.err)

        // Diverging after a few steps: the last checkpoint stays, and holds sane weights.
        let d2 = try makeTempDir(self)
        let (c2, _) = try demoRun(d2, ["optimizer.lr=1e6", "schedule.warmup_steps=1000", "training.max_steps=30", "training.save_every=1",
                                      "training.keep_checkpoints=2"])
        assertMoETuneError(try Trainer(config: c2, configPath: path).run(), contains: ["optimizer.lr", "training diverged at step", "the last checkpoint"])
        let last = try XCTUnwrap(TrainCheckpoint.list(outDir: d2 + "/out").last)
        XCTAssertGreaterThan(last.step, 1)
        let kept = try PEFTAdapter.load(directory: d2 + "/out", model: loaded.model)
        XCTAssertTrue(kept.all.allSatisfy { a in (0..<(a.outFeatures * a.rank)).allSatisfy { abs(a.b[$0]) <= 1e4 } })
    }

    /// A learning rate that saturates the adapter without passing the bound: the gradient
    /// norm is exactly 0 step after step (loss stuck); stopped after 5 such steps, and no
    /// checkpoint of the dead state rotates the last good one out.
    func testAGradientStuckAtZeroStopsTheRun() throws {
        let dir = try makeTempDir(self)
        let (c, path) = try demoRun(dir, ["optimizer.lr=1e5", "schedule.warmup_steps=1000", "training.max_steps=60", "training.save_every=1",
                                          "training.keep_checkpoints=2"])
        var norms: [Double] = []
        var events = TrainerEvents()
        events.step = { norms.append($0.gradNorm) }
        assertMoETuneError(try Trainer(config: c, configPath: path).run(events: events),
                           contains: [path, "optimizer.lr", "the gradient norm has been exactly 0 for 5 steps", "too high a learning rate"])
        XCTAssertEqual(Array(norms.suffix(4)), [0, 0, 0, 0])
        let last = try XCTUnwrap(TrainCheckpoint.list(outDir: dir + "/out").last)
        XCTAssertEqual(last.step, norms.count + 1 - 5, "the last checkpoint is the one before the gradient vanished")
    }

    // MARK: D9: process memory limits

    /// D9: under `ulimit -v` a batch the estimate allowed (it compared with physical memory
    /// only) ended in "Fatal error: out of memory" (exit 132), or hung in BLAS. The address-
    /// space, data-size and cgroup limits are checked too, with what is left under them.
    func testABatchOverTheProcessMemoryLimitIsRefused() throws {
        let dir = try makeTempDir(self)
        var text = ""
        for _ in 0..<64 { text += #"{"prompt": ""# + (0..<100).map { "w\($0)" }.joined(separator: " ") + #"", "completion": " x"}"# + "\n" }
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/long.jsonl"))
        let repo = Fixtures.root + "/../../.."
        let args = ["train", "--config", repo + "/configs/demo.yaml", "--set", "model=\(repo)/data/demo-model", "--set", "data.train=\(dir)/long.jsonl",
                    "--set", "data.valid=null", "--set", "data.test=null", "--set", "training.batch_size=64", "--set", "training.max_seq_len=512",
                    "--set", "training.max_steps=1", "--set", "training.out_dir=\(dir)/out"]
        let (status, err) = try runMoeTuneUnderAddressLimit(args, limitKB: 800000, timeout: 120, dir: dir)
        XCTAssertEqual(status, 1, err)
        let last = String(err.split(separator: "\n").last ?? "")
        XCTAssertTrue(last.hasPrefix("moe-tune: error: \(repo)/configs/demo.yaml: training.batch_size: a batch of 64 sequences of up to "), err)
        XCTAssertTrue(last.contains("GB left under the address-space limit (ulimit -v) of 0.8 GB"), err)
        XCTAssertFalse(err.contains("Fatal error"), err)
    }

    /// The cgroup limit as v2 and v1 show it (usage less reclaimable page cache); "max" and
    /// v1's huge number are no limit.
    func testCgroupMemoryLimitsAreRead() throws {
        let root = try makeTempDir(self)
        func write(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        }
        try write(root + "/v2/proc/cgroup", "0::/job\n")
        try write(root + "/v2/fs/job/memory.max", "4000000000\n")
        try write(root + "/v2/fs/job/memory.current", "1500000000\n")
        try write(root + "/v2/fs/job/memory.stat", "anon 1000\ninactive_file 500000000\n")
        XCTAssertEqual(MemoryEstimate.cgroupMemory(proc: root + "/v2/proc", mount: root + "/v2/fs").map { [$0.0, $0.1] }, [4e9, 1e9])
        try write(root + "/v2/fs/job/memory.max", "max\n")
        XCTAssertNil(MemoryEstimate.cgroupMemory(proc: root + "/v2/proc", mount: root + "/v2/fs"))
        // v1, the group's path not under the mount (a container): the mount's root is read.
        try write(root + "/v1/proc/cgroup", "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n")
        try write(root + "/v1/fs/memory/memory.limit_in_bytes", "2000000000\n")
        try write(root + "/v1/fs/memory/memory.usage_in_bytes", "700000000\n")
        try write(root + "/v1/fs/memory/memory.stat", "cache 1\ntotal_inactive_file 200000000\n")
        XCTAssertEqual(MemoryEstimate.cgroupMemory(proc: root + "/v1/proc", mount: root + "/v1/fs").map { [$0.0, $0.1] }, [2e9, 5e8])
        try write(root + "/v1/fs/memory/memory.limit_in_bytes", "9223372036854771712\n")
        XCTAssertNil(MemoryEstimate.cgroupMemory(proc: root + "/v1/proc", mount: root + "/v1/fs"))
        // And the limits list names each with what is left.
        try write(root + "/v1/fs/memory/memory.limit_in_bytes", "2000000000\n")
        let limits = MemoryEstimate.processLimits(proc: root + "/v1/proc", cgroupMount: root + "/v1/fs", rlimit: { _ in nil })
        XCTAssertEqual(limits, [.init(left: 1.5e9, what: "the cgroup memory limit of 2.0 GB, 0.5 GB of it in use")])
    }

    // MARK: D11: names from files in messages

    /// A name of 60 KB: terminal escape sequences, a bell, newlines, invalid UTF-8, a
    /// right-to-left override.
    static let hostileName: [UInt8] = {
        var b: [UInt8] = Array("blk.0.\u{1B}[2J\u{1B}]0;pwned\u{07}\n\r\t\u{202E}".utf8) + [0xFF, 0xC3, 0x28, 0x7F, 0x9B]
        while b.count < 60_000 { b += (0..<64).map { UInt8(($0 * 37 + b.count) & 0xFF) } }
        return b
    }()

    /// What a user sees is one printable line: no control characters (C0, DEL, C1), no bidi
    /// overrides, valid UTF-8, and short.
    func assertPrintable(_ text: String, maxLength: Int = 2000, file: StaticString = #filePath, line: UInt = #line) {
        let body = text.hasSuffix("\n") ? String(text.dropLast()) : text
        XCTAssertLessThan(body.count, maxLength, "\(body.prefix(300))", file: file, line: line)
        let bad = body.unicodeScalars.filter { $0.value < 0x20 || (0x7F..<0xA0).contains($0.value) || (0x202A...0x202E).contains($0.value) }
        XCTAssertTrue(bad.isEmpty, "control characters \(bad.map { String($0.value, radix: 16) }) in \(body.prefix(300).debugDescription)", file: file, line: line)
    }

    /// D11: a fuzzed GGUF wrote 60 KB of binary and control characters to the terminal (the
    /// tensor name, raw). Names from files are escaped and cut (Printable) wherever they
    /// enter a message; the error line as a whole is kept printable and bounded too.
    func testNamesFromFilesArePrintedEscapedAndCut() throws {
        let dir = try makeTempDir(self)
        var g = Data("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { g.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { g.append(contentsOf: $0) } }
        u32(3); u64(1); u64(0)
        u64(UInt64(Self.hostileName.count)); g.append(contentsOf: Self.hostileName)
        u32(1); u64(4); u32(999); u64(0)
        g.append(Data(count: 64))
        let gguf = dir + "/fuzz.gguf"
        try g.write(to: URL(fileURLWithPath: gguf))
        do {
            _ = try GGUFFile(path: gguf)
            XCTFail("expected a refusal")
        } catch let e as MoETuneError {
            assertPrintable(e.description)
            XCTAssertTrue(e.description.contains("tensor 'blk.0.\\u{1B}[2J\\u{1B}]0;pwned\\u{07}\\n\\r\\t\\u{202E}"), e.description)
            XCTAssertTrue(e.description.contains("more characters)'"), e.description)
        }
        let r = try runMoETune(["eval", "--model", gguf, "--data", Fixtures.dir("eval.jsonl")])
        XCTAssertEqual(r.status, 1, r.err)
        assertPrintable(r.err)
        XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(gguf): tensor 'blk.0."), r.err)

        // A safetensors header: the same name with an unsupported dtype.
        let name = String(decoding: Self.hostileName, as: UTF8.self)
        let header = try JSONSerialization.data(withJSONObject: [name: ["dtype": "Q9\u{1B}[31m", "shape": [1], "data_offsets": [0, 4]]])
        var st = Data()
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { st.append(contentsOf: $0) }
        st.append(header); st.append(Data(count: 4))
        let model = try copyFixture("mixtral", self)
        try st.write(to: URL(fileURLWithPath: model + "/model.safetensors"))
        let r2 = try runMoETune(["eval", "--model", model, "--data", Fixtures.dir("eval.jsonl")])
        XCTAssertEqual(r2.status, 1, r2.err)
        assertPrintable(r2.err)
        XCTAssertTrue(r2.err.contains("model.safetensors: tensor 'blk.0.\\u{1B}[2J"), r2.err)

        // A tokenizer vocabulary entry, and a message built elsewhere (the net in MoETuneError).
        let tok = try tokenizerDir(#"{"model": {"type": "BPE", "vocab": {"a\u001b[2Jb": -3}, "merges": []}}"#)
        assertMoETuneError(try HFTokenizer(directory: tok), contains: [#"model.vocab["a\u{1B}[2Jb"]"#])
        XCTAssertEqual(MoETuneError.invalid("x\u{1B}y\nz").description, "x\\u{1B}y\\nz")
        XCTAssertEqual(Printable.text(bytes: [0x61, 0xFF, 0xC3, 0xA9, 0xE2, 0x80]), "a\\xFF\u{E9}\\xE2\\x80")
        XCTAssertEqual(Printable.text(String(repeating: "é", count: 130)), String(repeating: "é", count: 120) + "… (10 more characters)")
    }

    // MARK: generate's numeric options

    /// `--max-new-tokens -1` and `--seed -1` said "Missing value" (a negative number read as a
    /// flag), `--temperature nan` said "must not be negative" and `--temperature inf` was
    /// accepted (garbage out, exit 0). Each is a usage error (exit 64) that says why now.
    func testGenerateNumericOptionsAreRefusedWithTheReason() throws {
        let base = ["generate", "--model", Fixtures.dir("mixtral"), "--prompt", "hi"]
        for (args, message) in [
            (["--max-new-tokens", "-1"], "Error: --max-new-tokens must be at least 1"),
            (["--max-new-tokens", "0"], "Error: --max-new-tokens must be at least 1"),
            (["--seed", "-1"], "Error: The value '-1' is invalid for '--seed <seed>': --seed must be at least 0, got -1"),
            (["--seed", "1e3"], "Error: The value '1e3' is invalid for '--seed <seed>': --seed must be an integer from 0 to 18446744073709551615, got 1e3"),
            (["--temperature", "nan"], "Error: --temperature must be a finite number, got nan"),
            (["--temperature", "inf"], "Error: --temperature must be a finite number, got inf"),
            (["--temperature", "-0.5"], "Error: --temperature must not be negative"),
            (["--top-k", "-3"], "Error: --top-k must not be negative"),
            (["--top-p", "nan"], "Error: --top-p must be in (0, 1], got nan"),
        ] {
            let r = try runMoETune(base + args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").first.map(String.init), message, "\(args)")
        }
        // A negative --weight is read as the value (and refused when it gives garbage).
        let r = try runMoETune(base + ["--adapter", Fixtures.dir("train-mixtral"), "--weight", "-inf", "--max-new-tokens", "2"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("adapter weight -inf times the scale"), r.err)
        // Good values still run.
        let ok = try runMoETune(base + ["--seed", "7", "--temperature", "0.5", "--max-new-tokens", "2"])
        XCTAssertEqual(ok.status, 0, ok.err)
    }

    // MARK: D5/D6: chat templates that build text without bound

    func render(_ source: String) throws -> String { try JinjaTemplate(source).render([:]).text }

    /// D5: `~` in a loop grew a string to gigabytes (doubling it exhausted memory). One value
    /// may hold 16 MiB and one render may build 256 MiB of text; both are one-line errors.
    func testStringGrowthInATemplateIsBounded() throws {
        var start = Date()
        assertMoETuneError(try render(#"{% set ns = namespace(s="ab") %}{% for i in range(200) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"#),
                           contains: ["chat template line 1", "~ would build 32 MiB of text, more than the 16 MiB one value may hold"])
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
        start = Date()
        assertMoETuneError(try render(#"{% set big = "x" * 10000000 %}{% for i in range(1000) %}{% set y = big ~ i %}{% endfor %}"#),
                           contains: ["builds more than 256 MiB of text in one render", "~ in a loop?"])
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        // Other builders: a replace, a join or an indent that multiplies its input, the text of
        // a list of a million references to one long string, % and str.format.
        for (source, what) in [
            (#"{{ ("x" * 100000) | replace("x", "y" * 1000) }}"#, "replace would build"),
            (#"{{ ("x" * 100000).replace("", "y" * 1000) }}"#, "replace would build"),
            (#"{{ (["x" * 1000000] * 100) | join(",") }}"#, "join would build"),
            (#"{{ ",".join(["x" * 1000000] * 100) }}"#, "join would build"),
            (#"{{ ("a\n" * 100000) | indent(1000) }}"#, "indent would build"),
            (#"{{ (["x" * 1000000] * 100) | string }}"#, "the string filter would build"),
            (#"{{ (["x" * 1000000] * 100) ~ "" }}"#, "~ would build"),
            (#"{{ "%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s" % (("x" * 1000000,) * 17) }}"#, "% formatting would build"),
            (#"{% set s = "x" * 1000000 %}{{ "{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}".format(s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s) }}"#, "str.format would build"),
        ] {
            assertMoETuneError(try render(source), contains: [what])
        }
    }

    /// D6: str.replace (and find/count) compared a copied slice at every offset: quadratic.
    /// Linear now (KMP), with Python's results.
    func testReplaceAndFindAreLinearWithPythonsResults() throws {
        XCTAssertEqual(try render(#"{{ "aaaa".replace("aa", "b") }}|{{ "abcabc".replace("bc", "X", 1) }}|{{ "ab".replace("", "-") }}|{{ "été".replace("t", "T") }}"#),
                       "bb|aXabc|-a-b-|éTé")
        XCTAssertEqual(try render(#"{{ "abab".count("ab") }} {{ "aaaa".count("aa") }} {{ "éaéa".find("a") }} {{ "éaéa".rfind("a") }} {{ "xyz".find("q") }} {{ "ab".count("") }}"#),
                       "2 2 1 3 -1 3")
        XCTAssertEqual(try render(#"{{ "a.b.c" | replace(".", "::") }}"#), "a::b::c")
        let start = Date()
        let out = try render(#"{% set s = "a" * 2000000 %}{% set p = "a" * 5000 ~ "b" %}{{ s.replace(p, "x")|length }} {{ s.count(p) }} {{ (s ~ "b").find(p) }}"#)
        XCTAssertEqual(out, "2000000 0 1995000")
        XCTAssertLessThan(Date().timeIntervalSince(start), 5, "linear, not 2e6 x 5e3 comparisons")
    }

    /// A normal chat of 30k characters still renders in well under 50 ms (a real template).
    func testANormalLongChatStillRendersFast() throws {
        let template = try String(contentsOfFile: Fixtures.dir("templates/real/llama3.1.jinja"), encoding: .utf8)
        let renderer = try ChatTemplateRenderer(template: template, specialTokens: ["bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"])
        var messages: [ChatMessage] = [ChatMessage(role: "system", content: "You are helpful.")]
        for i in 0..<60 { messages.append(ChatMessage(role: i % 2 == 0 ? "user" : "assistant", content: String(repeating: "word\(i) ", count: 80))) }
        XCTAssertGreaterThan(messages.compactMap { if case let .string(s)? = $0.fields["content"] { return s.count } else { return nil } }.reduce(0, +), 30_000)
        _ = try renderer.render(messages)
        var best = Double.infinity
        for _ in 0..<3 {
            let t = Date()
            _ = try renderer.render(messages, addGenerationPrompt: true)
            best = min(best, Date().timeIntervalSince(t))
        }
        XCTAssertLessThan(best, 0.05, "rendering 30k characters took \(best) s")
    }

    // MARK: D4: a regex that backtracks without end

    /// D4: a pre-tokenizer Split regex like `(a+)+$` on a 41-character text never returned
    /// (Swift Regex has no step limit). BoundedRegex counts steps: a one-line error naming
    /// the tokenizer file and the pattern, within 2 s; the same for a Replace normalizer.
    func testACatastrophicRegexFailsFastNamingFileAndPattern() throws {
        let text = String(repeating: "a", count: 40) + "!"
        for (extra, ok, ids) in [(#""pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false}"#, "ab", [Int32(2)]),
                                 (#""normalizer": {"type": "Replace", "pattern": {"Regex": "(a|aa)*b"}, "content": "x"}"#, "aa", [0, 0])] {
            let dir = try tokenizerDir(#"{"model": \#(model), \#(extra)}"#)
            let tok = try HFTokenizer(directory: dir)
            let start = Date()
            assertMoETuneError(try tok.encode(text), contains: [dir + "/tokenizer.json", "the regex '", "catastrophic backtracking", "was stopped"])
            XCTAssertLessThan(Date().timeIntervalSince(start), 2)
            XCTAssertEqual(try tok.encode(ok), ids, "a text the pattern handles quickly still encodes")
        }
        // Through the command line: exit 1, one line naming the file and the pattern.
        let dir = try tokenizerDir(#"{"model": \#(model), "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false}}"#,
                                   files: ["d.jsonl": #"{"text": "\#(text)"}"# + "\n"])
        let start = Date()
        let r = try runMoETune(["tokenize", "--model", dir, "--data", dir + "/d.jsonl"])
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("moe-tune: error: \(dir)/tokenizer.json: the regex '(a+)+$' took more than"), r.err)
    }

    /// BoundedRegex against Swift Regex (Unicode-scalar semantics) on the constructs the
    /// tokenizer patterns use; the real DeepSeek-V3 patterns go through it (and the parity
    /// suite against the Rust tokenizers stays green).
    func testBoundedRegexAgreesWithSwiftRegex() throws {
        let patterns = [
            ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""##,
            #"\p{N}{1,3}"#, #"[一-龥\u3040-ゟ゠-ヿ]+"#, #"\d{4,}"#, #"(?i:'s|'t|'re)|\p{L}+"#, #"a*?b|a+"#, #"(?:ab|a)(?:bc|c)"#,
            #"x(?=y)|y(?!z)"#, #"(?<=a)b+|(?<!c)d"#, #"[^\s\p{L}]+"#, #"\bword\b"#, #"(?>a+)b|a"#, #"a{2,3}?"#,
            #"\x41|\u00e9|\t"#, #"(?i)straße|ÉTÉ"#, #"."#, #"[^\d\s]+"#,
        ]
        let texts = ["Hello, world! It's 2024-05-01.\n\n  Tabs\tand   spaces ",
                     "数字123４５６ ひらがな カタカナ 漢字", "aaab abbc xyz xy yz ac adb cd ab ", "wordy word sword WORD", "été ÉTÉ STRASSE straße é\u{301}"]
        for p in patterns {
            guard let bounded = BoundedRegex(p) else { XCTFail("BoundedRegex does not parse \(p)"); continue }
            guard let swift = try? Regex(p).matchingSemantics(.unicodeScalar) else { continue }
            for t in texts {
                var s = t
                let got = try s.withUTF8 { b in try bounded.matches(b, 0..<b.count) }
                let u = t.utf8
                let want = t.matches(of: swift).compactMap { m -> Range<Int>? in
                    let lo = u.distance(from: u.startIndex, to: m.range.lowerBound), hi = u.distance(from: u.startIndex, to: m.range.upperBound)
                    return lo < hi ? lo..<hi : nil
                }
                XCTAssertEqual(got, want, "pattern \(p) on \(t.debugDescription)")
            }
        }
        // \w is Oniguruma's (marks and every decimal digit are word characters), not Swift's.
        var t = "数字123４５６ é\u{301}x!"
        let words = try t.withUTF8 { b in try XCTUnwrap(BoundedRegex(#"\w+"#)).matches(b, 0..<b.count) }
        XCTAssertEqual(words, [0..<18, 19..<24])
        // Constructs it leaves to Swift Regex (a backreference) still work there.
        XCTAssertNil(BoundedRegex(#"(a)\1"#))
        guard case .regex = try SplitPattern.regex(#"(a)\1"#) else { return XCTFail("a backreference falls back to Swift Regex") }
        guard case .bounded = try SplitPattern.regex(patterns[0]) else { return XCTFail("the DeepSeek-V3 pattern runs bounded") }
    }
}
