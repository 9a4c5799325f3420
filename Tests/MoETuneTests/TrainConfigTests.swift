import XCTest
import Yams
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

final class TrainConfigTests: XCTestCase {
    /// Lines 1-5; a section appended after it starts on line 6, its first key on line 7.
    let minimal = """
    model: m
    data:
      train: t.jsonl
    training:
      out_dir: out
    """

    func parse(_ yaml: String, _ overrides: [String] = []) throws -> TrainConfig {
        try TrainConfig.parse(yaml, path: "c.yaml", overrides: overrides)
    }

    /// Writes `text` to a fresh temporary file and returns its path.
    func write(_ text: String, name: String = "c.yaml") throws -> String {
        let path = try makeTempDir(self) + "/" + name
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func shipped(_ name: String) -> String { repoRoot.appendingPathComponent("configs/" + name).path }

    // MARK: Defaults

    func testDefaults() throws {
        let c = try TrainConfig.load(path: try write(minimal))
        XCTAssertEqual(c.model, "m")
        XCTAssertEqual(c.data.train, "t.jsonl")
        XCTAssertNil(c.data.valid)
        XCTAssertNil(c.data.test)
        XCTAssertFalse(c.data.trainOnInputs)
        XCTAssertNil(c.data.chatTemplate)

        XCTAssertEqual(c.lora.rank, 8)
        XCTAssertEqual(c.lora.alpha, 16)
        XCTAssertEqual(c.lora.dropout, 0)
        XCTAssertFalse(c.lora.rslora)
        XCTAssertEqual(c.lora.targets, [.query, .key, .value, .projection])
        XCTAssertEqual(c.lora.layers, .all)
        XCTAssertEqual(c.lora.overrides, [:])
        XCTAssertEqual(c.loraSpec, LoRASpec())
        XCTAssertEqual(c.loraSpec.scale(of: .query), 2)

        XCTAssertEqual(c.optimizer.name, .adamw)
        XCTAssertEqual(c.optimizer.lr, 2e-4)
        XCTAssertEqual(c.optimizer.beta1, 0.9)
        XCTAssertEqual(c.optimizer.beta2, 0.999)
        XCTAssertEqual(c.optimizer.eps, 1e-8)
        XCTAssertEqual(c.optimizer.weightDecay, 0)
        XCTAssertEqual(c.optimizer.momentum, 0)
        XCTAssertFalse(c.optimizer.nesterov)
        XCTAssertEqual(c.optimizer.gradClip, 1.0)

        XCTAssertEqual(c.schedule.name, .cosine)
        XCTAssertEqual(c.schedule.warmupSteps, 0)
        XCTAssertEqual(c.schedule.minLR, 0)

        XCTAssertEqual(c.training.batchSize, 4)
        XCTAssertEqual(c.training.gradAccum, 1)
        XCTAssertNil(c.training.maxSteps)       // neither max_steps nor epochs: one epoch (the trainer's reading of nil)
        XCTAssertNil(c.training.epochs)
        XCTAssertEqual(c.training.maxSeqLen, 512)
        XCTAssertEqual(c.training.seed, 0)
        XCTAssertEqual(c.training.evalEvery, 50)
        XCTAssertNil(c.training.evalBatches)
        XCTAssertEqual(c.training.saveEvery, 0)
        XCTAssertEqual(c.training.outDir, "out")
        XCTAssertEqual(c.training.logEvery, 1)
    }

    func testEmptySectionsAndNullsMeanDefaults() throws {
        let c = try parse(minimal + "\nlora:\noptimizer: null\nschedule: {}\n")
        XCTAssertEqual(c, try parse(minimal))
    }

    func testFullConfigAndNumberForms() throws {
        let c = try parse(minimal + """

        lora:
          rank: 4
          alpha: 8
          dropout: 0.05
          rslora: true
          targets: [query, mlp, router]
          layers: 2
          overrides:
            mlp: {rank: 2, alpha: 4}
            router: {rank: 1}
        optimizer:
          name: sgd
          lr: 1e-4
          weight_decay: 1_0
          momentum: 0.9
          nesterov: yes
          grad_clip: null
        schedule: {name: constant, warmup_steps: 5}
        """)
        XCTAssertEqual(c.optimizer.lr, 1e-4)
        XCTAssertEqual(c.optimizer.weightDecay, 10)
        XCTAssertEqual(c.optimizer.name, .sgd)
        XCTAssertTrue(c.optimizer.nesterov)
        XCTAssertNil(c.optimizer.gradClip)
        XCTAssertEqual(c.lora.layers, .last(2))
        XCTAssertEqual(c.lora.overrides[.mlp], LoRAShape(rank: 2, alpha: 4))
        XCTAssertEqual(c.lora.overrides[.router], LoRAShape(rank: 1, alpha: 8))   // alpha defaults to lora.alpha
        XCTAssertEqual(c.loraSpec.scale(of: .query), 4)  // rsLoRA: alpha / sqrt(r) = 8 / 2
        XCTAssertEqual(c.loraSpec.targets, [.query, .mlp, .router])
        XCTAssertEqual(c.loraSpec.dropout, 0.05)
        XCTAssertEqual(c.schedule.name, .constant)
        XCTAssertEqual(try parse(minimal + "\nlora:\n  layers: [0, 3]\n").lora.layers, .list([0, 3]))
        XCTAssertEqual(try parse(minimal + "\nlora:\n  layers: all\n").lora.layers, .all)
        XCTAssertEqual(try parse(minimal + "\noptimizer:\n  betas: [0, 0.5]\n").optimizer.beta2, 0.5)
        XCTAssertEqual(try parse(minimal + "\noptimizer:\n  lr: 1\n").optimizer.lr, 1)   // an integer is a number
    }

    // MARK: Errors: files, types, unknown keys

    func testMissingFileAndNonMapping() throws {
        let dir = try makeTempDir(self)
        assertMoETuneError(try TrainConfig.load(path: dir + "/nope.yaml"), contains: [dir + "/nope.yaml", "not found"])
        assertMoETuneError(try TrainConfig.load(path: try write("- a\n- b\n")), contains: ["c.yaml", "mapping"])
        assertMoETuneError(try TrainConfig.load(path: try write("just text\n")), contains: ["c.yaml", "mapping"])
        assertMoETuneError(try TrainConfig.load(path: try write("model: [\n")), contains: ["c.yaml", "not valid YAML"])
        assertMoETuneError(try TrainConfig.load(path: try write("model: a\nmodel: b\n")), contains: ["c.yaml", "model"])
        assertMoETuneError(try TrainConfig.load(path: try write("")), contains: ["c.yaml", "model", "required"])
        assertMoETuneError(try parse("model: m\ntraining:\n  out_dir: o\n"), contains: ["c.yaml", "data.train", "required"])
        assertMoETuneError(try parse("model: m\ndata:\n  train: t\n"), contains: ["c.yaml", "training.out_dir", "required"])
    }

    func testWrongTypesNameKeyAndLine() {
        assertMoETuneError(try parse(minimal + "\nlora:\n  rank: eight\n"),
                           contains: ["c.yaml: lora.rank: line 7: expected an integer, got \"eight\""])
        let cases: [(String, [String])] = [
            ("lora:\n  rank: 2.5", ["lora.rank", "expected an integer"]),
            ("lora:\n  alpha: x", ["lora.alpha", "expected a number"]),
            ("lora:\n  rslora: maybe", ["lora.rslora", "true or false"]),
            ("lora:\n  targets: query", ["lora.targets", "list"]),
            ("lora:\n  targets: [query, {a: b}]", ["lora.targets", "mapping"]),
            ("lora:\n  layers: some", ["lora.layers", "all"]),
            ("lora:\n  layers: 0", ["lora.layers", "positive"]),
            ("lora:\n  layers: [1, x]", ["lora.layers", "list of layer indices"]),
            ("lora:\n  overrides: [mlp]", ["lora.overrides", "mapping"]),
            ("lora:\n  overrides: {mlp: 4}", ["lora.overrides.mlp", "mapping"]),
            ("lora:\n  overrides: {mlp: {rank: x}}", ["lora.overrides.mlp.rank", "integer"]),
            ("lora: 5", ["lora", "mapping"]),
            ("optimizer:\n  lr: \"0.1\"", ["optimizer.lr", "expected a number"]),
            ("optimizer:\n  lr: .inf", ["optimizer.lr", "expected a number"]),
            ("optimizer:\n  betas: 0.9", ["optimizer.betas", "two numbers"]),
            ("optimizer:\n  betas: [0.9]", ["optimizer.betas", "two numbers"]),
            ("optimizer:\n  grad_clip: off", ["optimizer.grad_clip", "number"]),
            ("schedule:\n  warmup_steps: [1]", ["schedule.warmup_steps", "got a list"]),
            ("data:\n  train: [[a]]", ["data.train", "item 0", "expected a file name or {path: FILE, weight: W}"]),
            ("data:\n  train: {a: 1}", ["data.train", "expected a file name or a list"]),
            ("data:\n  train: []", ["data.train", "empty"]),
            ("data:\n  train: [a, {path: b, weight: 0}]", ["data.train[1].weight", "must be positive"]),
            ("data:\n  train: [a, {path: b, weight: -2}]", ["data.train[1].weight", "must be positive"]),
            ("data:\n  train: [a, {weight: 2}]", ["data.train[1].path", "required"]),
            ("data:\n  train: [a, {path: b, wieght: 2}]", ["data.train[1].wieght", "did you mean data.train[1].weight"]),
            ("data:\n  train: t\n  valid_split: -0.1", ["data.valid_split", "fraction between 0 and 1"]),
            ("data:\n  train: t\n  valid_split: 0", ["data.valid_split", "fraction between 0 and 1"]),
            ("data:\n  train: t\n  valid_split: 1.5", ["data.valid_split", "whole count"]),
            ("data:\n  train: t\n  valid_split: x", ["data.valid_split", "expected a number"]),
            ("data:\n  train: t\n  valid: v\n  valid_split: 0.1", ["data.valid_split", "data.valid is given"]),
        ]
        for (section, fragments) in cases {
            let lines = section.split(separator: "\n").count
            let yaml = "model: m\ntraining:\n  out_dir: o\n" + (section.hasPrefix("data") ? "" : "data:\n  train: t\n") + section + "\n"
            let line = 3 + (section.hasPrefix("data") ? 0 : 2) + lines
            assertMoETuneError(try parse(yaml), contains: ["c.yaml"] + fragments + ["line \(line)"])
        }
    }

    func testUnknownKeysSuggestNearest() {
        assertMoETuneError(try parse(minimal + "\nlora:\n  rnak: 4\n"),
                           contains: ["c.yaml: lora.rnak: line 7: unknown key; did you mean lora.rank?"])
        assertMoETuneError(try parse(minimal + "\noptimiser: {lr: 1}\n"), contains: ["optimiser", "line 6", "did you mean optimizer?"])
        assertMoETuneError(try parse(minimal + "\ntraining2: 1\n"), contains: ["training2", "line 6", "did you mean training?"])
        assertMoETuneError(try parse("model: m\ndata:\n  train: t\n  vaild: v\ntraining:\n  out_dir: o\n"),
                           contains: ["data.vaild", "line 4", "did you mean data.valid?"])
        assertMoETuneError(try parse("model: m\ndata:\n  train: t\ntraining:\n  out_dir: o\n  max_step: 3\n"),
                           contains: ["training.max_step", "line 6", "did you mean training.max_steps?"])
        assertMoETuneError(try parse(minimal + "\nlora:\n  overrides:\n    mpl: {rank: 2}\n"),
                           contains: ["lora.overrides.mpl", "line 8", "did you mean lora.overrides.mlp?"])
        assertMoETuneError(try parse(minimal + "\nlora:\n  overrides:\n    mlp: {rnk: 2}\n"),
                           contains: ["lora.overrides.mlp.rnk", "line 8", "did you mean lora.overrides.mlp.rank?"])
        // Far from every key: no suggestion, still an error.
        assertMoETuneError(try parse(minimal + "\nzzzzzzzzzzzz: 1\n"), contains: ["zzzzzzzzzzzz", "unknown key"])
    }

    // MARK: Validation

    /// Every semantic check names its key and the line of the value at fault.
    func testValidation() {
        // (section text, key, line of the key, message fragment); the section starts on line 4.
        let cases: [(String, String, Int, String)] = [
            ("lora:\n  rank: 0", "lora.rank", 5, "at least 1"),
            ("lora:\n  rank: -3", "lora.rank", 5, "at least 1"),
            ("lora:\n  alpha: 0", "lora.alpha", 5, "positive"),
            ("lora:\n  alpha: -1", "lora.alpha", 5, "positive"),
            ("lora:\n  dropout: 1.0", "lora.dropout", 5, "[0, 1)"),
            ("lora:\n  dropout: -0.1", "lora.dropout", 5, "[0, 1)"),
            ("lora:\n  targets: []", "lora.targets", 5, "empty"),
            ("lora:\n  targets: [query, query]", "lora.targets", 5, "twice"),
            ("lora:\n  targets: [query, valu]", "lora.targets", 5, "did you mean value?"),
            ("lora:\n  layers: [1, 2, 1]", "lora.layers", 5, "twice"),
            ("lora:\n  targets: [query, head]\n  layers: 2", "lora.layers", 6, "head"),
            ("lora:\n  overrides: {mlp: {rank: 0}}", "lora.overrides.mlp.rank", 5, "at least 1"),
            ("lora:\n  overrides:\n    mlp: {alpha: 0}", "lora.overrides.mlp.alpha", 6, "positive"),
            ("optimizer:\n  lr: 0", "optimizer.lr", 5, "positive"),
            ("optimizer:\n  lr: -1e-3", "optimizer.lr", 5, "positive"),
            ("optimizer:\n  name: adam", "optimizer.name", 5, "did you mean adamw?"),
            ("optimizer:\n  name: sdg", "optimizer.name", 5, "did you mean sgd?"),
            ("optimizer:\n  betas: [0.9, 1.2]", "optimizer.betas", 5, "[0, 1)"),
            ("optimizer:\n  betas: [-0.1, 0.9]", "optimizer.betas", 5, "[0, 1)"),
            ("optimizer:\n  betas: [0.9, 1]", "optimizer.betas", 5, "[0, 1)"),
            ("optimizer:\n  eps: 0", "optimizer.eps", 5, "positive"),
            ("optimizer:\n  weight_decay: -1", "optimizer.weight_decay", 5, "negative"),
            ("optimizer:\n  momentum: 1.5", "optimizer.momentum", 5, "[0, 1)"),
            ("optimizer:\n  momentum: 1", "optimizer.momentum", 5, "[0, 1)"),
            ("optimizer:\n  momentum: -0.1", "optimizer.momentum", 5, "[0, 1)"),
            ("optimizer:\n  name: sgd\n  nesterov: true", "optimizer.nesterov", 6, "momentum"),
            ("optimizer:\n  grad_clip: 0", "optimizer.grad_clip", 5, "positive"),
            ("schedule:\n  name: cosin", "schedule.name", 5, "did you mean cosine?"),
            ("schedule:\n  name: linear", "schedule.name", 5, "expected one of cosine, constant"),
            ("schedule:\n  warmup_steps: -2", "schedule.warmup_steps", 5, "negative"),
            ("schedule:\n  min_lr: 1.0", "schedule.min_lr", 5, "between 0 and optimizer.lr"),
            ("schedule:\n  min_lr: -1e-5", "schedule.min_lr", 5, "between 0 and optimizer.lr"),
            ("data:\n  train: t\n  chat_template: \"no placeholders\"", "data.chat_template", 6, "{user}"),
        ]
        for (section, key, line, fragment) in cases {
            let yaml = "model: m\ntraining:\n  out_dir: o\n" + (section.hasPrefix("data") ? "" : "data:\n  train: t\n") + section + "\n"
            let at = section.hasPrefix("data") ? line : line + 2
            assertMoETuneError(try parse(yaml), contains: ["c.yaml: \(key): line \(at): ", fragment])
        }
        // The training section (lines 4-): out_dir on line 5, the key on line 6.
        let training: [(String, String, String)] = [
            ("batch_size: 0", "training.batch_size", "at least 1"),
            ("grad_accum: 0", "training.grad_accum", "at least 1"),
            ("grad_accum: -1", "training.grad_accum", "at least 1"),
            ("max_seq_len: 1", "training.max_seq_len", "at least 2"),
            ("max_steps: 0", "training.max_steps", "at least 1"),
            ("epochs: 0", "training.epochs", "positive"),
            ("eval_every: -1", "training.eval_every", "negative"),
            ("eval_batches: 0", "training.eval_batches", "at least 1"),
            ("save_every: -5", "training.save_every", "negative"),
            ("log_every: 0", "training.log_every", "at least 1"),
            ("max_steps: 5\n  epochs: 2", "training.max_steps", "not both"),
        ]
        for (entry, key, fragment) in training {
            let yaml = "model: m\ndata:\n  train: t\ntraining:\n  out_dir: o\n  \(entry)\n"
            assertMoETuneError(try parse(yaml), contains: ["c.yaml: \(key): line 6: ", fragment])
        }
    }

    // MARK: --set

    func testSetOverridesScalarsListsAndNull() throws {
        let c = try parse(minimal, ["training.max_steps=20", "lora.targets=[query,value]", "data.valid=v.jsonl",
                                    "optimizer.grad_clip=null", "lora.alpha=32", "optimizer.name=sgd", "optimizer.momentum=0.9",
                                    "lora.layers=[0, 2]", "optimizer.betas=[0.8,0.99]", "data.train_on_inputs=true"])
        XCTAssertEqual(c.training.maxSteps, 20)
        XCTAssertEqual(c.lora.targets, [.query, .value])
        XCTAssertEqual(c.lora.alpha, 32)
        XCTAssertEqual(c.lora.layers, .list([0, 2]))
        XCTAssertEqual(c.data.valid, "v.jsonl")
        XCTAssertTrue(c.data.trainOnInputs)
        XCTAssertNil(c.optimizer.gradClip)
        XCTAssertEqual(c.optimizer.name, .sgd)
        XCTAssertEqual(c.optimizer.momentum, 0.9)
        XCTAssertEqual(c.optimizer.beta1, 0.8)

        let withValid = "model: m\ndata:\n  train: t.jsonl\n  valid: v.jsonl\ntraining:\n  out_dir: o\n"
        XCTAssertEqual(try parse(withValid).data.valid, "v.jsonl")
        XCTAssertNil(try parse(withValid, ["data.valid=null"]).data.valid)
        XCTAssertNil(try parse(withValid, ["data.valid=~"]).data.valid)
        XCTAssertNil(try parse(withValid, ["data.valid="]).data.valid)          // empty: null, as in a file
        XCTAssertEqual(try parse(withValid, ["data.valid='null'"]).data.valid, "null")   // quoted: the string
        XCTAssertEqual(try parse(withValid, ["data.valid=a=b.jsonl"]).data.valid, "a=b.jsonl")  // first '=' splits

        // Flow mappings, nested keys and later --set winning over earlier ones.
        let o = try parse(minimal, ["lora.overrides={router: {rank: 2, alpha: 4}}", "lora.overrides.mlp.rank=3",
                                    "lora.rank=2", "lora.rank=6"])
        XCTAssertEqual(o.lora.overrides, [.router: LoRAShape(rank: 2, alpha: 4), .mlp: LoRAShape(rank: 3, alpha: 16)])
        XCTAssertEqual(o.lora.rank, 6)
        XCTAssertEqual(try parse(minimal, ["schedule={name: constant}"]).schedule.name, .constant)
    }

    func testSetAppliesBeforeValidation() throws {
        // An invalid file value replaced by --set is fine; a valid one made invalid by --set is not.
        XCTAssertEqual(try parse(minimal + "\nlora:\n  rank: 0\n", ["lora.rank=4"]).lora.rank, 4)
        let steps = "model: m\ndata:\n  train: t\ntraining:\n  out_dir: o\n  max_steps: 5\n"
        assertMoETuneError(try parse(steps, ["training.epochs=2"]), contains: ["c.yaml: training.max_steps: line 6: ", "not both"])
        XCTAssertEqual(try parse(steps, ["training.max_steps=null", "training.epochs=2"]).training.epochs, 2)
        // min_lr checked against the overridden lr.
        assertMoETuneError(try parse(minimal + "\nschedule:\n  min_lr: 1e-4\n", ["optimizer.lr=1e-5"]),
                           contains: ["schedule.min_lr", "line 7"])
    }

    func testSetErrorsSayDashDashSet() throws {
        assertMoETuneError(try parse(minimal, ["lora.rnak=3"]), contains: ["lora.rnak", "--set", "unknown key", "did you mean lora.rank?"])
        assertMoETuneError(try parse(minimal, ["optimiser.lr=1"]), contains: ["optimiser", "--set", "did you mean optimizer?"])
        assertMoETuneError(try parse(minimal, ["lora.rank=x"]), contains: ["lora.rank", "--set", "expected an integer, got \"x\""])
        assertMoETuneError(try parse(minimal, ["lora.rank=\"8\""]), contains: ["lora.rank", "--set", "integer"])
        assertMoETuneError(try parse(minimal, ["lora.rank=0"]), contains: ["lora.rank", "--set", "at least 1"])
        assertMoETuneError(try parse(minimal, ["lora.targets=[query,valu]"]), contains: ["lora.targets", "--set", "did you mean value?"])
        assertMoETuneError(try parse(minimal, ["lora={rank: x}"]), contains: ["lora.rank", "--set", "integer"])
        assertMoETuneError(try parse(minimal, ["lora=5"]), contains: ["lora", "--set", "mapping"])
        assertMoETuneError(try parse(minimal, ["training.out_dir=null"]), contains: ["training.out_dir", "required"])
        // Malformed arguments name the whole argument.
        assertMoETuneError(try parse(minimal, ["lora.rank"]), contains: ["--set lora.rank", "key.sub=value"])
        assertMoETuneError(try parse(minimal, ["=3"]), contains: ["--set =3", "key.sub=value"])
        assertMoETuneError(try parse(minimal, ["lora..rank=3"]), contains: ["--set lora..rank=3", "malformed key"])
        assertMoETuneError(try parse(minimal, ["lora.targets=[query"]), contains: ["--set lora.targets=[query", "not valid YAML"])
        assertMoETuneError(try parse(minimal, ["model.x=3"]), contains: ["--set model.x=3", "not a mapping"])
        // A --set error never carries a line number of the file.
        do {
            _ = try parse(minimal + "\nlora:\n  rank: 8\n", ["lora.rank=x"])
            XCTFail("expected an error")
        } catch let e as MoETuneError {
            XCTAssertFalse(e.description.contains("line"), e.description)
        }
    }

    // MARK: Shipped configs and resolvedYAML

    func testDemoConfig() throws {
        let c = try TrainConfig.load(path: Self.shipped("demo.yaml"))
        XCTAssertEqual(c.model, "data/demo-model")
        XCTAssertEqual(c.data.train, "data/train.jsonl")
        XCTAssertEqual(c.data.valid, "data/valid.jsonl")
        XCTAssertEqual(c.data.test, "data/test.jsonl")
        XCTAssertEqual(c.loraSpec.rank, 8)
        XCTAssertEqual(c.loraSpec.alpha, 16)
        XCTAssertEqual(c.lora.targets, [.query, .key, .value, .projection, .mlp])
        XCTAssertEqual(c.optimizer.name, .adamw)
        XCTAssertEqual(c.optimizer.lr, 2e-3)
        XCTAssertEqual(c.schedule.name, .cosine)
        XCTAssertEqual(c.schedule.warmupSteps, 20)
        XCTAssertEqual(c.schedule.minLR, 2e-4)
        XCTAssertEqual(c.training.batchSize, 8)
        XCTAssertEqual(c.training.maxSteps, 300)
        XCTAssertEqual(c.training.maxSeqLen, 64)
        XCTAssertEqual(c.training.evalEvery, 50)
        XCTAssertEqual(c.training.outDir, "out/demo")
    }

    /// Every key path of a YAML document ("lora.rank", "quantization", ...).
    static func keyPaths(_ node: Node, prefix: String = "") -> Set<String> {
        guard case .mapping(let m) = node else { return [] }
        var out = Set<String>()
        for (k, v) in m {
            let path = prefix + (k.string ?? "?")
            // lora.overrides is a map of user-chosen names, not schema keys.
            if case .mapping = v, path != "lora.overrides" { out.formUnion(keyPaths(v, prefix: path + ".")) } else { out.insert(path) }
        }
        return out
    }

    func testExampleListsEveryKeyTheResolvedConfigHas() throws {
        let path = Self.shipped("example.yaml")
        let example = try TrainConfig.load(path: path)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let exampleKeys = Self.keyPaths(try XCTUnwrap(Yams.compose(yaml: text)))
        let resolvedKeys = Self.keyPaths(try XCTUnwrap(Yams.compose(yaml: example.resolvedYAML())))
        XCTAssertEqual(exampleKeys, resolvedKeys)
        // Every key of example.yaml carries a comment.
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && line.contains(": ") {
            XCTAssertTrue(line.contains("#"), "no comment: \(line)")
        }
        // And holds the defaults (apart from the required keys).
        let defaults = try parse("model: data/demo-model\ndata:\n  train: data/train.jsonl\ntraining:\n  out_dir: out/example\n")
        XCTAssertEqual(example, defaults)
    }

    func testShippedConfigsLoadAndResolvedYAMLRoundTrips() throws {
        for name in ["demo.yaml", "example.yaml", "moe.yaml", "qlora.yaml", "packing.yaml", "deepseek-v2-lite.yaml", "gpt-oss.yaml", "esft.yaml", "dpo.yaml", "grpo.yaml"] {
            let c = try TrainConfig.load(path: Self.shipped(name))
            let again = try TrainConfig.load(path: try write(c.resolvedYAML(), name: "resolved-" + name))
            XCTAssertEqual(c, again, name)
        }
    }

    func testResolvedYAMLRoundTripsEveryNonDefault() throws {
        let c = try parse("""
        model: "dir with spaces/mo\\"del: #1"
        data:
          train: 'back\\slash.jsonl'
          valid: "tab\\there\\u0001ctl\\u0085.jsonl"
          test: "ünïcödé — 模型.jsonl"
          train_on_inputs: true
          chat_template: "<s>[U] {user}\\n[A] {assistant}"
        lora:
          rank: 3
          alpha: 0.5
          dropout: 0.25
          rslora: true
          targets: [mlp, head, query]
          overrides: {head: {rank: 1, alpha: 2}, mlp: {rank: 5, alpha: 1e-3}}
        optimizer:
          name: sgd
          lr: 1.5e-7
          betas: [0, 0.5]
          eps: 1e-12
          weight_decay: 0.01
          momentum: 0.5
          nesterov: true
          grad_clip: null
        schedule: {name: constant, warmup_steps: 7, min_lr: 1e-7}
        training:
          batch_size: 3
          grad_accum: 2
          epochs: 2.5
          max_seq_len: 2
          seed: -1
          eval_every: 0
          eval_batches: 4
          save_every: 10
          out_dir: "null"
          log_every: 5
        """)
        XCTAssertEqual(c.training.outDir, "null")
        XCTAssertEqual(c.data.valid, "tab\there\u{01}ctl\u{85}.jsonl")
        let again = try TrainConfig.load(path: try write(c.resolvedYAML()))
        XCTAssertEqual(c, again)
        XCTAssertEqual(c.resolvedYAML(), again.resolvedYAML())

        let last = try parse(minimal, ["lora.layers=3", "training.max_steps=9"])
        XCTAssertEqual(try parse(last.resolvedYAML()), last)
        let list = try parse(minimal, ["lora.layers=[4, 0]"])
        XCTAssertEqual(try parse(list.resolvedYAML()), list)
    }
}

extension TrainConfigTests {
    /// A key whose value is a block on the following lines is reported on its own line.
    func testBlockValuedKeysAreReportedOnTheKeyLine() {
        assertMoETuneError(try parse(minimal + "\noptimiser:\n  lr: 1\n"), contains: ["optimiser", "line 6:", "did you mean optimizer"])
        assertMoETuneError(try parse(minimal + "\nlora:\n  targets:\n    - query\n    - valu\n"), contains: ["lora.targets", "line 7:", "valu"])
    }
}
