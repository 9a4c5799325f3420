import Foundation
import Yams
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// The training configuration: a YAML file (see configs/example.yaml for every key),
/// then `--set key.sub=value` overrides, then defaults. Every error names the file, the
/// key and the line (or --set).
public struct TrainConfig: Equatable, Sendable {
    /// One training file and how often its examples are drawn per epoch (weight 2: each
    /// twice; 0.5: a seeded random half, a different half each epoch).
    public struct TrainFile: Equatable, Sendable {
        public var path: String
        public var weight = 1.0
        public init(path: String, weight: Double = 1.0) { self.path = path; self.weight = weight }
    }

    /// data.valid_split: a fraction of the training examples, or a count of them.
    public enum ValidSplit: Equatable, Sendable {
        case fraction(Double)
        case count(Int)
    }

    public struct DataSection: Equatable, Sendable {
        /// data.train: one file, or a list of files with optional weights.
        public var trainFiles: [TrainFile]
        /// The first training file.
        public var train: String { trainFiles[0].path }
        public var valid: String?
        /// Held out of the training examples as the validation set when `valid` is absent.
        public var validSplit: ValidSplit?
        public var test: String?
        public var trainOnInputs = false
        public var chatTemplate: String?
        /// Longest JSONL line accepted, in bytes.
        public var maxLineBytes = JSONL.defaultMaxLineBytes
    }

    public struct LoRASection: Equatable, Sendable {
        public var rank = 8
        public var alpha = 16.0
        public var dropout = 0.0
        public var rslora = false
        public var targets: [ModuleKind] = [.query, .key, .value, .projection]
        public var layers: LayerSelection = .all
        public var overrides: [ModuleKind: LoRAShape] = [:]
        public var experts = ExpertsSection()
    }

    public enum OptimizerName: String, Sendable, CaseIterable { case adamw, sgd }
    public enum ScheduleName: String, Sendable, CaseIterable { case cosine, constant }

    public struct OptimizerSection: Equatable, Sendable {
        public var name: OptimizerName = .adamw
        public var lr = 2e-4
        public var beta1 = 0.9
        public var beta2 = 0.999
        public var eps = 1e-8
        public var weightDecay = 0.0
        public var momentum = 0.0
        public var nesterov = false
        /// Clip the global gradient norm to this; nil: no clipping.
        public var gradClip: Double? = 1.0
    }

    public struct ScheduleSection: Equatable, Sendable {
        public var name: ScheduleName = .cosine
        public var warmupSteps = 0
        public var minLR = 0.0
    }

    public enum RouterMode: String, Sendable, CaseIterable { case frozen, lora, full }

    /// The `moe:` section: Mixture-of-Experts switches (ignored keys on dense models are errors).
    public struct MoESection: Equatable, Sendable {
        /// nil: the model's router_aux_loss_coef; 0: off.
        public var auxLossCoef: Double?
        public var zLossCoef = 0.0
        /// nil: LoRA if lora.targets holds router, else frozen.
        public var router: RouterMode?
        public var jitter = 0.0
        public var noiseStd = 0.0
        public var noiseLearned = false
        public var capacityFactor: Double?
        public var topK: Int?
    }

    /// training.method: supervised fine-tuning, or preference training on
    /// {"prompt", "chosen", "rejected"} lines (DPO with the adapter-off base as the reference, ORPO),
    /// or GRPO with verifiable rewards on {"prompt", ...fields} lines.
    public enum TrainMethod: String, Sendable, CaseIterable { case sft, dpo, orpo, grpo }
    /// training.recompute: none keeps every layer's activations for the backward pass;
    /// layers keeps each decoder layer's input and recomputes the layer in backward.
    public enum Recompute: String, Sendable, CaseIterable { case none, layers }
    public enum DPOLossName: String, Sendable, CaseIterable { case sigmoid, ipo, hinge, robust }

    /// The `dpo:` section (TRL's DPOConfig names).
    public struct DPOSection: Equatable, Sendable {
        public var beta = 0.1
        public var loss: DPOLossName = .sigmoid
        public var labelSmoothing = 0.0
        /// Reference log-probabilities once before training (cached) instead of in every step.
        public var precomputeRef = false
    }

    /// The `orpo:` section: beta is TRL's ORPOConfig.beta (the paper's lambda).
    public struct ORPOSection: Equatable, Sendable {
        public var beta = 0.1
    }

    public struct TrainingSection: Equatable, Sendable {
        public var method: TrainMethod = .sft
        /// A PEFT adapter folder to start from (its rank, alpha and targets); nil: a new adapter.
        public var initAdapter: String?
        public var batchSize = 4
        public var gradAccum = 1
        public var maxSteps: Int?
        public var epochs: Double?
        public var maxSeqLen = 512
        public var seed = 0
        public var evalEvery = 50
        public var evalBatches: Int?
        public var saveEvery = 0
        /// Checkpoints kept in out_dir/checkpoints (the newest ones).
        public var keepCheckpoints = 2
        public var outDir: String
        public var logEvery = 1
        /// Pack several examples into each row of max_seq_len tokens (attention kept per example).
        public var packing = false
        /// Tokens per micro-batch when packing: rows = batch_tokens / max_seq_len;
        /// nil: batch_size rows.
        public var batchTokens: Int?
        /// Activation recomputation (gradient checkpointing per decoder layer).
        public var recompute: Recompute = .none

        /// The packing plan of these settings (nil: not packing).
        public var packingPlan: PackingPlan? {
            guard packing else { return nil }
            return PackingPlan(rowTokens: maxSeqLen, rows: max(1, batchTokens.map { $0 / maxSeqLen } ?? batchSize))
        }
    }

    public var model: String
    public var data: DataSection
    public var lora = LoRASection()
    public var optimizer = OptimizerSection()
    public var schedule = ScheduleSection()
    public var moe = MoESection()
    public var dpo = DPOSection()
    public var orpo = ORPOSection()
    public var grpo = GRPOSection()
    /// QLoRA: NF4 base weights (nil: full precision).
    public var quantization: QuantizationSpec?
    /// How the frozen base's linear weights are held (fp32, or bf16 with half the memory).
    public var baseDType: BaseDType = .fp32
    public var training: TrainingSection

    /// The router mode after defaults: LoRA when lora.targets holds router.
    public var routerMode: RouterMode { moe.router ?? (lora.targets.contains(.router) ? .lora : .frozen) }

    public var loraSpec: LoRASpec {
        var spec = LoRASpec(rank: lora.rank, alpha: lora.alpha, dropout: lora.dropout, rslora: lora.rslora,
                            targets: Set(lora.targets), layers: lora.layers, overrides: lora.overrides)
        if routerMode == .lora { spec.targets.insert(.router) }
        spec.trainRouters = routerMode == .full
        return spec
    }

    // MARK: Loading

    public static func load(path: String, overrides: [String] = []) throws -> TrainConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MoETuneError.file(path: path, message: FileManager.default.fileExists(atPath: path) ? "cannot read" : "config file not found")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw MoETuneError.file(path: path, message: "not UTF-8 text") }
        return try parse(text, path: path, overrides: overrides)
    }

    public static func parse(_ text: String, path: String, overrides: [String] = []) throws -> TrainConfig {
        var root: Node
        do {
            root = try Yams.compose(yaml: text) ?? Node.mapping(Node.Mapping([]))
        } catch let e as YamlError {
            throw MoETuneError.file(path: path, message: "not valid YAML: \(String(describing: e).split(separator: "\n").first ?? "")")
        } catch {
            throw MoETuneError.file(path: path, message: "not valid YAML")
        }
        guard case .mapping = root else { throw MoETuneError.file(path: path, message: "expected a YAML mapping of sections at the top level") }
        var overridden = Set<String>()
        for o in overrides {
            let (key, node) = try parseOverride(o)
            root = try setting(root, path: key.split(separator: ".").map(String.init), to: node, argument: o)
            overridden.insert(key)
        }
        let r = try ConfigReader(file: path, prefix: "", node: root, overridden: overridden)
        let config = try decode(r)
        try r.finish()
        try config.validate(r)
        return config
    }

    package static func parseOverride(_ arg: String) throws -> (String, Node) {
        guard let eq = arg.firstIndex(of: "="), eq != arg.startIndex else {
            throw MoETuneError.invalid("--set \(arg): expected key.sub=value")
        }
        let key = String(arg[..<eq]), valueText = String(arg[arg.index(after: eq)...])
        guard key.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ !$0.isEmpty }) else {
            throw MoETuneError.invalid("--set \(arg): malformed key \"\(key)\"")
        }
        let node: Node
        do {
            // An empty value is YAML's null, as `key:` with nothing after it is in a file.
            node = try Yams.compose(yaml: valueText) ?? Node("null", Tag(.null), .plain)
        } catch {
            throw MoETuneError.invalid("--set \(arg): the value is not valid YAML")
        }
        return (key, stripMarks(node))
    }

    /// Override values carry no line numbers (reported as "--set").
    package static func stripMarks(_ n: Node) -> Node {
        switch n {
        case .scalar(let s): return Node(s.string, s.tag, s.style)
        case .sequence(let s): return Node(s.map(stripMarks), s.tag, s.style)
        case .mapping(let m): return Node(m.map { (stripMarks($0.key), stripMarks($0.value)) }, m.tag, m.style)
        case .alias: return n
        }
    }

    package static func setting(_ node: Node, path: [String], to value: Node, argument: String) throws -> Node {
        guard let head = path.first else { return value }
        var pairs: [(Node, Node)] = []
        if case .mapping(let m) = node { pairs = m.map { ($0.key, $0.value) } }
        else if case .scalar(let sc) = node, !["", "~", "null", "Null", "NULL"].contains(sc.string) {
            throw MoETuneError.invalid("--set \(argument): \(head) is inside a value that is not a mapping")
        }
        if let i = pairs.firstIndex(where: { $0.0.string == head }) {
            pairs[i].1 = try setting(pairs[i].1, path: Array(path.dropFirst()), to: value, argument: argument)
        } else {
            pairs.append((Node(head), try setting(Node("null"), path: Array(path.dropFirst()), to: value, argument: argument)))
        }
        return Node(pairs)
    }

    /// The whole config from its top-level reader, section by section in the file's order of
    /// reading (the first bad key is the one reported); `parse` then checks for unknown keys.
    package static func decode(_ r: ConfigReader) throws -> TrainConfig {
        let model = try r.string("model")
        let data = try dataSection(r)
        let lora = try loraSection(r)
        let opt = try optimizerSection(r)
        let schedule = try scheduleSection(r)
        let moe = try moeSection(r)
        let quantization = try quantizationSection(r)
        let (dpo, orpo) = try preferenceSections(r)
        let grpo = try grpoSection(r)
        let baseDType = BaseDType(rawValue: try r.choice("base_dtype", BaseDType.allCases.map(\.rawValue), default: "fp32"))!
        if baseDType.isBF16, quantization != nil {
            throw r.fail("base_dtype", "\(baseDType.rawValue) and quantization (QLoRA, nf4) exclude each other: NF4 already holds the frozen weights in 4 bits; drop one of them")
        }
        let tr = try trainingSection(r)
        var config = TrainConfig(model: model, data: data, lora: lora, optimizer: opt, schedule: schedule, moe: moe,
                                 quantization: quantization, training: tr)
        config.baseDType = baseDType
        config.dpo = dpo
        config.orpo = orpo
        config.grpo = grpo
        return config
    }

    /// The data: section (train files, validation and test files, masking, chat template).
    package static func dataSection(_ r: ConfigReader) throws -> DataSection {
        let d = try r.section("data")
        var data = DataSection(trainFiles: try trainFiles(d), valid: try d.optionalString("valid"),
                               validSplit: try validSplit(d), test: try d.optionalString("test"),
                               trainOnInputs: try d.bool("train_on_inputs", default: false),
                               chatTemplate: try d.optionalString("chat_template"))
        data.maxLineBytes = try d.int("max_line_bytes", default: data.maxLineBytes)
        try d.finish()
        return data
    }

    /// The lora: section: shape, targets, layers, per-module overrides and the experts: subsection.
    package static func loraSection(_ r: ConfigReader) throws -> LoRASection {
        let l = try r.section("lora")
        var lora = LoRASection()
        lora.rank = try l.int("rank", default: lora.rank)
        lora.alpha = try l.double("alpha", default: lora.alpha)
        lora.dropout = try l.double("dropout", default: lora.dropout)
        lora.rslora = try l.bool("rslora", default: lora.rslora)
        if let t = l.raw("targets") { lora.targets = try moduleKinds(t, reader: l, key: "targets") }
        if let n = l.raw("layers") { lora.layers = try layerSelection(n, reader: l) }
        lora.overrides = try loraOverrides(l, rank: lora.rank, alpha: lora.alpha)
        lora.experts = try ExpertsSection.decode(l, targets: lora.targets)
        try l.finish()
        return lora
    }

    /// lora.overrides: a {rank, alpha} per module kind named (each defaulting to lora's own).
    package static func loraOverrides(_ l: ConfigReader, rank: Int, alpha: Double) throws -> [ModuleKind: LoRAShape] {
        let o = try l.section("overrides")
        var overrides: [ModuleKind: LoRAShape] = [:]
        for kind in ModuleKind.allCases {
            let s = try o.section(kind.rawValue)
            if o.node(kind.rawValue) != nil {
                overrides[kind] = LoRAShape(rank: try s.int("rank", default: rank), alpha: try s.double("alpha", default: alpha))
            }
            try s.finish()
        }
        try o.finish()
        return overrides
    }

    /// The optimizer: section.
    package static func optimizerSection(_ r: ConfigReader) throws -> OptimizerSection {
        let op = try r.section("optimizer")
        var opt = OptimizerSection()
        opt.name = OptimizerName(rawValue: try op.choice("name", OptimizerName.allCases.map(\.rawValue), default: opt.name.rawValue))!
        opt.lr = try op.double("lr", default: opt.lr)
        if let b = op.raw("betas") {
            guard case .sequence(let seq) = b, seq.count == 2,
                  let b1 = seq[0].float ?? seq[0].int.map(Double.init), let b2 = seq[1].float ?? seq[1].int.map(Double.init) else {
                throw op.fail("betas", "expected a list of two numbers, e.g. [0.9, 0.999]")
            }
            (opt.beta1, opt.beta2) = (b1, b2)
        }
        opt.eps = try op.double("eps", default: opt.eps)
        opt.weightDecay = try op.double("weight_decay", default: opt.weightDecay)
        opt.momentum = try op.double("momentum", default: opt.momentum)
        opt.nesterov = try op.bool("nesterov", default: opt.nesterov)
        opt.gradClip = op.node("grad_clip") == nil ? opt.gradClip : try op.optionalDouble("grad_clip")
        try op.finish()
        return opt
    }

    /// The schedule: section.
    package static func scheduleSection(_ r: ConfigReader) throws -> ScheduleSection {
        let sc = try r.section("schedule")
        var schedule = ScheduleSection()
        schedule.name = ScheduleName(rawValue: try sc.choice("name", ScheduleName.allCases.map(\.rawValue), default: schedule.name.rawValue))!
        schedule.warmupSteps = try sc.int("warmup_steps", default: schedule.warmupSteps)
        schedule.minLR = try sc.double("min_lr", default: schedule.minLR)
        try sc.finish()
        return schedule
    }

    /// The moe: section (auxiliary losses, router mode, jitter and noise, capacity, top-k).
    package static func moeSection(_ r: ConfigReader) throws -> MoESection {
        let m = try r.section("moe")
        var moe = MoESection()
        moe.auxLossCoef = try m.optionalDouble("aux_loss_coef")
        moe.zLossCoef = try m.double("z_loss_coef", default: 0)
        moe.router = try m.optionalChoice("router", RouterMode.allCases.map(\.rawValue)).flatMap(RouterMode.init(rawValue:))
        moe.jitter = try m.double("jitter", default: 0)
        moe.noiseStd = try m.double("noise_std", default: 0)
        moe.noiseLearned = try m.bool("noise_learned", default: false)
        moe.capacityFactor = try m.optionalDouble("capacity_factor")
        moe.topK = try m.optionalInt("top_k")
        try m.finish()
        return moe
    }

    /// The quantization: section: nil when absent or null (QLoRA off), else NF4 with 64-value blocks.
    package static func quantizationSection(_ r: ConfigReader) throws -> QuantizationSpec? {
        guard let qn = r.node("quantization"), qn.null == nil else {
            _ = r.raw("quantization")
            return nil
        }
        let q = try r.section("quantization")
        _ = try q.choice("type", ["nf4"], default: "nf4")
        let bs = try q.int("block_size", default: 64)
        guard bs == 64 else { throw q.fail("block_size", "only 64 is supported (as bitsandbytes' default)") }
        let spec = QuantizationSpec(doubleQuant: try q.bool("double_quant", default: true))
        try q.finish()
        return spec
    }

    /// The training: section (out_dir required).
    package static func trainingSection(_ r: ConfigReader) throws -> TrainingSection {
        let t = try r.section("training")
        let outDir = try t.string("out_dir")
        var tr = TrainingSection(outDir: outDir)
        tr.method = TrainMethod(rawValue: try t.choice("method", TrainMethod.allCases.map(\.rawValue), default: tr.method.rawValue))!
        tr.initAdapter = try t.optionalString("init_adapter")
        tr.batchSize = try t.int("batch_size", default: tr.batchSize)
        tr.gradAccum = try t.int("grad_accum", default: tr.gradAccum)
        tr.maxSteps = try t.optionalInt("max_steps")
        tr.epochs = try t.optionalDouble("epochs")
        tr.maxSeqLen = try t.int("max_seq_len", default: tr.maxSeqLen)
        tr.seed = try t.int("seed", default: tr.seed)
        tr.evalEvery = try t.int("eval_every", default: tr.evalEvery)
        tr.evalBatches = try t.optionalInt("eval_batches")
        tr.saveEvery = try t.int("save_every", default: tr.saveEvery)
        tr.keepCheckpoints = try t.int("keep_checkpoints", default: tr.keepCheckpoints)
        tr.logEvery = try t.int("log_every", default: tr.logEvery)
        tr.packing = try t.bool("packing", default: tr.packing)
        tr.batchTokens = try t.optionalInt("batch_tokens")
        tr.recompute = Recompute(rawValue: try t.choice("recompute", Recompute.allCases.map(\.rawValue), default: tr.recompute.rawValue))!
        try t.finish()
        return tr
    }

    /// The dpo: and orpo: sections (read whatever the method; validate checks they fit it).
    package static func preferenceSections(_ r: ConfigReader) throws -> (DPOSection, ORPOSection) {
        let d = try r.section("dpo")
        var dpo = DPOSection()
        dpo.beta = try d.double("beta", default: dpo.beta)
        dpo.loss = DPOLossName(rawValue: try d.choice("loss", DPOLossName.allCases.map(\.rawValue), default: dpo.loss.rawValue))!
        dpo.labelSmoothing = try d.double("label_smoothing", default: dpo.labelSmoothing)
        dpo.precomputeRef = try d.bool("precompute_ref", default: dpo.precomputeRef)
        try d.finish()
        let o = try r.section("orpo")
        var orpo = ORPOSection()
        orpo.beta = try o.double("beta", default: orpo.beta)
        try o.finish()
        return (dpo, orpo)
    }

    /// data.train: FILE, or a list of FILE or {path: FILE, weight: W} (W > 0).
    package static func trainFiles(_ d: ConfigReader) throws -> [TrainFile] {
        guard let n = d.raw("train") else { throw d.fail("train", "required key is missing") }
        switch n {
        case .scalar(let s):
            return [TrainFile(path: s.string)]
        case .sequence(let items):
            guard !items.isEmpty else { throw d.fail("train", "the list of training files is empty") }
            return try items.enumerated().map { i, item in
                switch item {
                case .scalar(let s) where item.null == nil:
                    return TrainFile(path: s.string)
                case .mapping:
                    let f = try ConfigReader(file: d.file, prefix: d.prefix + "train[\(i)].", node: item, overridden: [])
                    guard f.node("path") != nil else {
                        throw MoETuneError.config(path: d.file, key: f.prefix + "path", message: "\(ConfigReader.where(item)): required key is missing")
                    }
                    let file = TrainFile(path: try f.string("path"), weight: try f.double("weight", default: 1))
                    guard file.weight > 0 else { throw f.fail("weight", "must be positive, got \(file.weight)") }
                    // Every draw of an epoch is listed: a huge weight asked for gigabytes (1e7) or
                    // more than exists (1e15) before the first step.
                    guard file.weight <= WeightedMix.maxWeight else {
                        throw f.fail("weight", "\(file.weight) is more than \(Int(WeightedMix.maxWeight)) draws of each example an epoch; lower it (the other files' weights are relative to it)")
                    }
                    try f.finish()
                    return file
                default:
                    throw d.fail("train", "item \(i): expected a file name or {path: FILE, weight: W}, got \(d.describe(item))")
                }
            }
        default:
            throw d.fail("train", "expected a file name or a list of files, got \(d.describe(n))")
        }
    }

    /// data.valid_split: a fraction in (0, 1) or a whole count >= 1.
    package static func validSplit(_ d: ConfigReader) throws -> ValidSplit? {
        guard let v = try d.optionalDouble("valid_split") else { return nil }
        if v > 0, v < 1 { return .fraction(v) }
        guard v >= 1, v == v.rounded(), v <= Double(Int32.max) else {
            throw d.fail("valid_split", "expected a fraction between 0 and 1 (exclusive) or a whole count of examples, got \(v)")
        }
        return .count(Int(v))
    }

    package static func moduleKinds(_ n: Node, reader: ConfigReader, key: String) throws -> [ModuleKind] {
        guard case .sequence(let seq) = n else {
            throw reader.fail(key, "expected a list of module kinds, e.g. [query, value]")
        }
        var kinds: [ModuleKind] = []
        let names = ModuleKind.allCases.map(\.rawValue)
        for item in seq {
            guard case .scalar(let scalar) = item else {
                throw reader.fail(key, "expected a module kind, got \(reader.describe(item))")
            }
            let s = scalar.string
            guard let k = ModuleKind(rawValue: s) else {
                throw reader.fail(key, "unknown module kind \"\(s)\"; expected one of \(names.joined(separator: ", "))" + suggestion(s, names))
            }
            guard !kinds.contains(k) else { throw reader.fail(key, "\(s) is listed twice") }
            kinds.append(k)
        }
        guard !kinds.isEmpty else { throw reader.fail(key, "the list of targets is empty") }
        return kinds
    }

    package static func layerSelection(_ n: Node, reader: ConfigReader) throws -> LayerSelection {
        switch n {
        case .scalar(let s) where s.string == "all": return .all
        case .scalar(let s):
            guard let v = Int(s.string), v >= 1 else { throw reader.fail("layers", "expected all, a positive number (the last N layers) or a list of layer indices") }
            return .last(v)
        case .sequence(let seq):
            let ls = seq.compactMap { $0.int }
            guard ls.count == seq.count, !ls.isEmpty, ls.allSatisfy({ $0 >= 0 }) else {
                throw reader.fail("layers", "expected a non-empty list of layer indices")
            }
            if let dup = ls.enumerated().first(where: { ls[..<$0.offset].contains($0.element) })?.element {
                throw reader.fail("layers", "layer \(dup) is listed twice")
            }
            return .list(ls)
        default: throw reader.fail("layers", "expected all, a number or a list")
        }
    }

    // MARK: Validation

    package func validate(_ r: ConfigReader) throws {
        let l = try r.section("lora"), op = try r.section("optimizer"), sc = try r.section("schedule"), t = try r.section("training")
        guard lora.rank >= 1 else { throw l.fail("rank", "must be at least 1, got \(lora.rank)") }
        guard lora.alpha > 0 else { throw l.fail("alpha", "must be positive, got \(lora.alpha)") }
        if lora.layers != .all, lora.targets.contains(.head) {
            throw l.fail("layers", "a layer subset cannot be combined with the head target: PEFT's layers_to_transform, which records the subset in the adapter, has no layer for lm_head")
        }
        guard lora.dropout >= 0, lora.dropout < 1 else { throw l.fail("dropout", "must be in [0, 1), got \(lora.dropout)") }
        for (kind, shape) in lora.overrides {
            let s = try l.section("overrides").section(kind.rawValue)
            guard shape.rank >= 1 else { throw s.fail("rank", "must be at least 1") }
            guard shape.alpha > 0 else { throw s.fail("alpha", "must be positive") }
        }
        guard optimizer.lr > 0 else { throw op.fail("lr", "must be positive, got \(optimizer.lr)") }
        guard (0..<1).contains(optimizer.beta1), (0..<1).contains(optimizer.beta2) else { throw op.fail("betas", "each must be in [0, 1)") }
        guard optimizer.eps > 0 else { throw op.fail("eps", "must be positive") }
        guard optimizer.weightDecay >= 0 else { throw op.fail("weight_decay", "must not be negative") }
        guard optimizer.momentum >= 0, optimizer.momentum < 1 else { throw op.fail("momentum", "must be in [0, 1)") }
        guard !optimizer.nesterov || optimizer.momentum > 0 else { throw op.fail("nesterov", "needs momentum > 0") }
        if let c = optimizer.gradClip, c <= 0 { throw op.fail("grad_clip", "must be positive, or null for no clipping") }
        let m = try r.section("moe")
        if let a = moe.auxLossCoef, a < 0 { throw m.fail("aux_loss_coef", "must not be negative (0: off, null: the model's router_aux_loss_coef)") }
        guard moe.zLossCoef >= 0 else { throw m.fail("z_loss_coef", "must not be negative") }
        guard moe.jitter >= 0, moe.jitter < 1 else { throw m.fail("jitter", "must be in [0, 1)") }
        guard moe.noiseStd >= 0 else { throw m.fail("noise_std", "must not be negative") }
        if moe.noiseLearned, moe.noiseStd <= 0 { throw m.fail("noise_learned", "needs noise_std > 0 (the starting scale)") }
        if let f = moe.capacityFactor, f <= 0 { throw m.fail("capacity_factor", "must be positive, or null for dropless routing") }
        if let k = moe.topK, k < 1 { throw m.fail("top_k", "must be at least 1") }
        if moe.router == .frozen, lora.targets.contains(.router) {
            throw m.fail("router", "frozen, but lora.targets holds router; drop one of them")
        }
        if moe.router == .full, lora.targets.contains(.router) {
            throw m.fail("router", "full training replaces the router's LoRA; remove router from lora.targets")
        }
        guard schedule.warmupSteps >= 0 else { throw sc.fail("warmup_steps", "must not be negative") }
        guard schedule.minLR >= 0, schedule.minLR <= optimizer.lr else { throw sc.fail("min_lr", "must be between 0 and optimizer.lr (\(optimizer.lr))") }
        // Upper bounds keep every size computed from these far from overflow.
        let L = TrainConfig.limits
        guard training.batchSize >= 1 else { throw t.fail("batch_size", "must be at least 1") }
        guard training.batchSize <= L.batchSize else { throw t.fail("batch_size", "must be at most \(L.batchSize), got \(training.batchSize)") }
        guard training.gradAccum >= 1 else { throw t.fail("grad_accum", "must be at least 1") }
        guard training.gradAccum <= L.gradAccum else { throw t.fail("grad_accum", "must be at most \(L.gradAccum), got \(training.gradAccum)") }
        guard training.maxSeqLen >= 2 else { throw t.fail("max_seq_len", "must be at least 2") }
        guard training.maxSeqLen <= L.maxSeqLen else { throw t.fail("max_seq_len", "must be at most \(L.maxSeqLen), got \(training.maxSeqLen)") }
        if training.maxSteps != nil, training.epochs != nil { throw t.fail("max_steps", "give max_steps or epochs, not both") }
        if let s = training.maxSteps, s < 1 { throw t.fail("max_steps", "must be at least 1") }
        if let s = training.maxSteps, s > L.maxSteps { throw t.fail("max_steps", "must be at most \(L.maxSteps), got \(s)") }
        if let e = training.epochs, !(e > 0) { throw t.fail("epochs", "must be positive") }
        if let e = training.epochs, e > Double(L.epochs) { throw t.fail("epochs", "must be at most \(L.epochs), got \(e)") }
        guard training.keepCheckpoints >= 1 else { throw t.fail("keep_checkpoints", "must be at least 1") }
        guard training.evalEvery >= 0 else { throw t.fail("eval_every", "must not be negative (0: evaluate only at the end)") }
        if let b = training.evalBatches, b < 1 { throw t.fail("eval_batches", "must be at least 1, or null for the whole set") }
        guard training.saveEvery >= 0 else { throw t.fail("save_every", "must not be negative (0: save only at the end)") }
        guard training.logEvery >= 1 else { throw t.fail("log_every", "must be at least 1") }
        if let b = training.batchTokens {
            guard training.packing else { throw t.fail("batch_tokens", "sizes packed micro-batches; set training.packing: true or remove it") }
            guard b >= training.maxSeqLen else { throw t.fail("batch_tokens", "must be at least max_seq_len (\(training.maxSeqLen)), got \(b)") }
            guard b / training.maxSeqLen <= L.batchSize else { throw t.fail("batch_tokens", "gives more than \(L.batchSize) rows of max_seq_len") }
        }
        try validatePreference(r)
        try validateGRPO(r)
        if data.validSplit != nil, data.valid != nil {
            throw try r.section("data").fail("valid_split", "holds out part of data.train as the validation set, but data.valid is given; keep one")
        }
        guard data.maxLineBytes >= 1 else { throw try r.section("data").fail("max_line_bytes", "must be at least 1") }
        if let tpl = data.chatTemplate {
            guard ChatFormat.isValidSetting(tpl) else {
                throw try r.section("data").fail("chat_template", "must be null, \"llama2\", a .jinja file, or contain {user} followed by {assistant}")
            }
        }
    }

    package func validatePreference(_ r: ConfigReader) throws {
        let t = try r.section("training"), d = try r.section("dpo"), o = try r.section("orpo")
        if training.method != .dpo, let key = ["beta", "loss", "label_smoothing", "precompute_ref"].first(where: { d.node($0) != nil }) {
            throw d.fail(key, "the dpo section applies to training.method: dpo, but the method is \(training.method.rawValue)")
        }
        if training.method != .orpo, o.node("beta") != nil {
            throw o.fail("beta", "the orpo section applies to training.method: orpo, but the method is \(training.method.rawValue)")
        }
        guard dpo.beta > 0, dpo.beta.isFinite else { throw d.fail("beta", "must be positive, got \(dpo.beta)") }
        guard dpo.labelSmoothing >= 0, dpo.labelSmoothing < 0.5 else { throw d.fail("label_smoothing", "must be in [0, 0.5), got \(dpo.labelSmoothing)") }
        if dpo.labelSmoothing != 0, dpo.loss == .ipo || dpo.loss == .hinge {
            throw d.fail("label_smoothing", "applies to loss: sigmoid (conservative DPO) and robust, not \(dpo.loss.rawValue)")
        }
        guard orpo.beta > 0, orpo.beta.isFinite else { throw o.fail("beta", "must be positive, got \(orpo.beta)") }
        guard training.method == .sft || !training.packing else {
            throw t.fail("packing", "packs SFT examples; \(training.method.rawValue) batches whole sequences: remove it")
        }
        guard training.method == .sft || !data.trainOnInputs else {
            throw try r.section("data").fail("train_on_inputs", "\(training.method.rawValue) scores the completions only: remove it")
        }
        if let a = training.initAdapter, !FileManager.default.fileExists(atPath: a + "/adapter_config.json") {
            throw t.fail("init_adapter", "\(a) holds no adapter_config.json (a PEFT adapter folder)")
        }
    }

    /// data.train as YAML: the file alone, or the list with weights.
    package func trainYAML(_ q: (String?) -> String) -> String {
        if data.trainFiles.count == 1, data.trainFiles[0].weight == 1 { return q(data.train) }
        return "[" + data.trainFiles.map { "{path: \(q($0.path)), weight: \($0.weight)}" }.joined(separator: ", ") + "]"
    }

    package var validSplitYAML: String {
        switch data.validSplit {
        case nil: return "null"
        case .fraction(let f): return "\(f)"
        case .count(let c): return "\(c)"
        }
    }

    /// training.method and init_adapter, and the dpo: or orpo: section of the method in use;
    /// nothing at their defaults (an SFT run's config.yaml reads as before these keys existed).
    /// The training keys continue the training section, which resolvedYAML ends with.
    package func preferenceYAML(_ q: (String?) -> String) -> String {
        var s = ""
        if training.method != .sft || training.initAdapter != nil {
            s = "  method: \(training.method.rawValue)\n  init_adapter: \(q(training.initAdapter))\n"
        }
        switch training.method {
        case .sft: return s
        case .dpo: return s +
            "dpo:\n  beta: \(dpo.beta)\n  loss: \(dpo.loss.rawValue)\n  label_smoothing: \(dpo.labelSmoothing)\n  precompute_ref: \(dpo.precomputeRef)\n"
        case .orpo: return s + "orpo:\n  beta: \(orpo.beta)\n"
        case .grpo: return s + grpoYAML(q)
        }
    }

    /// The largest sizes a config may ask for.
    public static let limits = (batchSize: 65_536, gradAccum: 65_536, maxSeqLen: 1 << 20, maxSteps: 1_000_000_000, epochs: 1_000_000)

    // MARK: Rendering

    /// A double-quoted YAML scalar ("null" for nil); control characters escaped so the file reads back.
    static func yamlQuoted(_ s: String?) -> String {
        guard let s else { return "null" }
        var escaped = ""
        for u in s.unicodeScalars {
            switch u {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            case _ where u.value < 0x20 || (0x7F...0x9F).contains(u.value) || [0xFEFF, 0xFFFE, 0xFFFF].contains(u.value):
                let hex = String(u.value, radix: 16)
                escaped += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: escaped.unicodeScalars.append(u)
            }
        }
        return "\"\(escaped)\""
    }

    /// lora.layers as YAML: all, a count of last layers, or a list.
    static func layersYAML(_ layers: LayerSelection) -> String {
        switch layers {
        case .all: return "all"
        case .last(let k): return "\(k)"
        case .list(let ls): return "[" + ls.map(String.init).joined(separator: ", ") + "]"
        }
    }

    /// Every key with its value, defaults included, as YAML that `load` reads back.
    public func resolvedYAML() -> String {
        let q = Self.yamlQuoted
        func n(_ v: Double?) -> String { v.map { "\($0)" } ?? "null" }
        func n(_ v: Int?) -> String { v.map { "\($0)" } ?? "null" }
        let layers = Self.layersYAML(lora.layers)
        var overrides = ""
        for kind in ModuleKind.allCases { if let o = lora.overrides[kind] { overrides += "\n    \(kind.rawValue): {rank: \(o.rank), alpha: \(o.alpha)}" } }
        return """
        model: \(q(model))
        data:
          train: \(trainYAML(q))
          valid: \(q(data.valid))
          valid_split: \(validSplitYAML)
          test: \(q(data.test))
          train_on_inputs: \(data.trainOnInputs)
          chat_template: \(q(data.chatTemplate))
          max_line_bytes: \(data.maxLineBytes)
        lora:
          rank: \(lora.rank)
          alpha: \(lora.alpha)
          dropout: \(lora.dropout)
          rslora: \(lora.rslora)
          targets: [\(lora.targets.map(\.rawValue).joined(separator: ", "))]
          layers: \(layers)
          overrides:\(overrides.isEmpty ? " {}" : overrides)\(lora.experts.yaml)
        optimizer:
          name: \(optimizer.name.rawValue)
          lr: \(optimizer.lr)
          betas: [\(optimizer.beta1), \(optimizer.beta2)]
          eps: \(optimizer.eps)
          weight_decay: \(optimizer.weightDecay)
          momentum: \(optimizer.momentum)
          nesterov: \(optimizer.nesterov)
          grad_clip: \(n(optimizer.gradClip))
        moe:
          aux_loss_coef: \(n(moe.auxLossCoef))
          z_loss_coef: \(moe.zLossCoef)
          router: \(moe.router?.rawValue ?? "null")
          jitter: \(moe.jitter)
          noise_std: \(moe.noiseStd)
          noise_learned: \(moe.noiseLearned)
          capacity_factor: \(n(moe.capacityFactor))
          top_k: \(n(moe.topK))
        quantization: \(quantization.map { "{type: nf4, block_size: 64, double_quant: \($0.doubleQuant)}" } ?? "null")
        base_dtype: \(baseDType.rawValue)
        schedule:
          name: \(schedule.name.rawValue)
          warmup_steps: \(schedule.warmupSteps)
          min_lr: \(schedule.minLR)
        training:
          batch_size: \(training.batchSize)
          grad_accum: \(training.gradAccum)
          max_steps: \(n(training.maxSteps))
          epochs: \(n(training.epochs))
          max_seq_len: \(training.maxSeqLen)
          seed: \(training.seed)
          eval_every: \(training.evalEvery)
          eval_batches: \(n(training.evalBatches))
          save_every: \(training.saveEvery)
          keep_checkpoints: \(training.keepCheckpoints)
          out_dir: \(q(training.outDir))
          log_every: \(training.logEvery)
          packing: \(training.packing)
          batch_tokens: \(n(training.batchTokens))
          recompute: \(training.recompute.rawValue)

        """ + preferenceYAML(q)
    }
}
