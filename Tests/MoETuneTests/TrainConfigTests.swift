import XCTest
@testable import MoETune

final class TrainConfigTests: XCTestCase {
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

    func testDefaults() throws {
        let c = try parse(minimal)
        XCTAssertEqual(c.lora.rank, 8)
        XCTAssertEqual(c.lora.alpha, 16)
        XCTAssertEqual(c.lora.targets, [.query, .key, .value, .projection])
        XCTAssertEqual(c.lora.layers, .all)
        XCTAssertEqual(c.optimizer.name, .adamw)
        XCTAssertEqual(c.optimizer.gradClip, 1.0)
        XCTAssertEqual(c.schedule.name, .cosine)
        XCTAssertEqual(c.training.batchSize, 4)
        XCTAssertNil(c.training.maxSteps)
        XCTAssertNil(c.data.valid)
        XCTAssertEqual(c.loraSpec.scale(of: .query), 2)
    }

    func testFullConfigAndNumberForms() throws {
        let c = try parse(minimal + """

        lora:
          rank: 4
          alpha: 8
          rslora: true
          targets: [query, mlp, router]
          layers: 2
          overrides:
            mlp: {rank: 2, alpha: 4}
        optimizer:
          name: sgd
          lr: 1e-4
          momentum: 0.9
          nesterov: true
          grad_clip: null
        schedule: {name: constant, warmup_steps: 5}
        """)
        XCTAssertEqual(c.optimizer.lr, 1e-4)
        XCTAssertEqual(c.optimizer.name, .sgd)
        XCTAssertNil(c.optimizer.gradClip)
        XCTAssertEqual(c.lora.layers, .last(2))
        XCTAssertEqual(c.lora.overrides[.mlp], LoRAShape(rank: 2, alpha: 4))
        XCTAssertEqual(c.loraSpec.scale(of: .query), 4)  // rsLoRA: alpha / sqrt(r) = 8 / 2
        XCTAssertEqual(c.schedule.name, .constant)
    }

    func testUnknownKeysSuggestNearest() {
        assertMoETuneError(try parse(minimal + "\nlora:\n  rnak: 4\n"), contains: ["c.yaml", "lora.rnak", "line 7", "did you mean lora.rank"])
        assertMoETuneError(try parse(minimal + "\noptimiser:\n  lr: 1\n"), contains: ["optimiser", "did you mean optimizer"])
        assertMoETuneError(try parse(minimal + "\nlora:\n  targets: [query, valu]\n"), contains: ["lora.targets", "valu", "did you mean value"])
        assertMoETuneError(try parse(minimal + "\noptimizer:\n  name: adam\n"), contains: ["optimizer.name", "adam", "did you mean adamw"])
    }

    func testWrongTypesNameKeyAndLine() {
        assertMoETuneError(try parse(minimal + "\nlora:\n  rank: eight\n"), contains: ["lora.rank", "line 7", "expected an integer", "eight"])
        assertMoETuneError(try parse(minimal + "\nlora:\n  rslora: maybe\n"), contains: ["lora.rslora", "true or false"])
        assertMoETuneError(try parse(minimal + "\noptimizer:\n  lr: \"0.1\"\n"), contains: ["optimizer.lr", "expected a number"])
        assertMoETuneError(try parse("model: m\ntraining:\n  out_dir: o\n"), contains: ["data.train", "required"])
        assertMoETuneError(try parse("- a\n- b\n"), contains: ["c.yaml", "mapping"])
        assertMoETuneError(try parse("model: [\n"), contains: ["c.yaml", "not valid YAML"])
    }

    func testValidation() {
        let cases: [(String, [String])] = [
            ("lora:\n  rank: 0", ["lora.rank", "at least 1"]),
            ("lora:\n  alpha: -1", ["lora.alpha", "positive"]),
            ("lora:\n  dropout: 1.0", ["lora.dropout", "[0, 1)"]),
            ("lora:\n  targets: []", ["lora.targets", "empty"]),
            ("lora:\n  targets: [query, query]", ["lora.targets", "twice"]),
            ("lora:\n  targets: [query, head]\n  layers: 2", ["lora.layers", "head"]),
            ("optimizer:\n  lr: 0", ["optimizer.lr", "positive"]),
            ("optimizer:\n  lr: -1e-3", ["optimizer.lr", "positive"]),
            ("optimizer:\n  nesterov: true", ["optimizer.nesterov", "momentum"]),
            ("optimizer:\n  momentum: 1.5", ["optimizer.momentum"]),
            ("optimizer:\n  betas: [0.9, 1.2]", ["optimizer.betas"]),
            ("schedule:\n  min_lr: 1.0", ["schedule.min_lr"]),
            ("schedule:\n  warmup_steps: -2", ["schedule.warmup_steps"]),
            ("training:\n  out_dir: o\n  batch_size: 0", ["training.batch_size"]),
            ("training:\n  out_dir: o\n  max_steps: 5\n  epochs: 2", ["training.max_steps", "not both"]),
            ("training:\n  out_dir: o\n  max_seq_len: 1", ["training.max_seq_len"]),
        ]
        let base = "model: m\ndata:\n  train: t.jsonl\n"
        for (extra, fragments) in cases {
            let yaml = base + (extra.hasPrefix("training") ? extra : extra + "\ntraining:\n  out_dir: o")
            assertMoETuneError(try parse(yaml), contains: ["c.yaml"] + fragments)
        }
    }

    func testSetOverrides() throws {
        let c = try parse(minimal, ["training.max_steps=20", "lora.targets=[query,value]", "data.valid=v.jsonl", "optimizer.grad_clip=null"])
        XCTAssertEqual(c.training.maxSteps, 20)
        XCTAssertEqual(c.lora.targets, [.query, .value])
        XCTAssertEqual(c.data.valid, "v.jsonl")
        XCTAssertNil(c.optimizer.gradClip)
        let d = try parse("model: m\ndata:\n  train: t.jsonl\n  valid: v.jsonl\ntraining:\n  out_dir: o\n", ["data.valid=null"])
        XCTAssertNil(d.data.valid)
        assertMoETuneError(try parse(minimal, ["lora.rnak=3"]), contains: ["lora.rnak", "--set", "did you mean lora.rank"])
        assertMoETuneError(try parse(minimal, ["lora.rank=x"]), contains: ["lora.rank", "--set", "integer"])
        XCTAssertThrowsError(try parse(minimal, ["lora.rank"]))
    }

    func testShippedConfigsLoadAndResolvedYAMLRoundTrips() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for name in ["demo.yaml", "example.yaml", "moe.yaml", "qlora.yaml"] {
            let path = root.appendingPathComponent("configs/" + name).path
            let c = try TrainConfig.load(path: path)
            let again = try TrainConfig.parse(c.resolvedYAML(), path: "resolved.yaml")
            XCTAssertEqual(c, again, name)
        }
    }
}
