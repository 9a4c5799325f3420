import Foundation
import MoEFormats
import MoEText
import Yams

extension TrainConfig {
    /// grpo.loss: TRL's loss_type names (how the per-token losses are averaged).
    public enum GRPOLossName: String, Sendable, CaseIterable { case grpo, drGRPO = "dr_grpo", bnpo }
    /// grpo.scale_rewards: what the advantages are divided by (TRL's names).
    public enum GRPOScaleRewards: String, Sendable, CaseIterable { case group, batch, none }
    public enum RewardType: String, Sendable, CaseIterable { case exact, numeric, regex, json, length, format, command }

    /// One item of grpo.rewards: a verifiable reward without code, or a program.
    public struct RewardSpec: Equatable, Sendable {
        public var type: RewardType
        /// The name in metrics.jsonl (rewards/NAME/mean); default the type (type_2, ... when repeated).
        public var name: String
        public var weight = 1.0
        /// exact, numeric: the data line's field compared with.
        public var field = "answer"
        /// exact, numeric: compare the text after the last `marker` (when given).
        public var marker: String?
        /// exact: compare the content of the last \boxed{...} (when there is one).
        public var boxed = false
        /// numeric: |last number - answer| <= tolerance.
        public var tolerance = 1e-6
        /// regex: 1 when it matches somewhere in the completion.
        public var pattern: String?
        /// json: the completion parses as JSON (an object holding every key, when given).
        public var keys: [String] = []
        /// length: -penalty for every completion token beyond max_tokens.
        public var maxTokens = 0
        public var penalty = 1.0
        /// format: "..." stands for any text; the trimmed completion must follow the template.
        public var template: String?
        /// command: the program and its arguments, and the seconds one answer may take.
        public var command: [String] = []
        public var timeout = 30.0

        public init(type: RewardType, name: String) { self.type = type; self.name = name }
    }

    /// The `grpo:` section (TRL's GRPOConfig names where it has one).
    public struct GRPOSection: Equatable, Sendable {
        /// Completions sampled per prompt (TRL's num_generations).
        public var groupSize = 4
        public var maxNewTokens = 64
        public var temperature = 1.0
        public var topP = 1.0
        public var scaleRewards: GRPOScaleRewards = .group
        public var epsilon = 0.2
        /// nil: epsilon.
        public var epsilonHigh: Double?
        public var beta = 0.0
        public var loss: GRPOLossName = .grpo
        /// Optimizer steps on each generation batch (TRL's num_iterations).
        public var iterations = 1
        /// Sampled completions written to metrics.jsonl per evaluation.
        public var logCompletions = 2
        public var rewards: [RewardSpec] = []

        package var lossSettings: GRPOLossSettings {
            GRPOLossSettings(loss: loss, epsilonLow: epsilon, epsilonHigh: epsilonHigh ?? epsilon, beta: beta, maxCompletionLength: maxNewTokens)
        }
    }

    /// The grpo: section (read whatever the method; validateGRPO checks it fits it).
    package static func grpoSection(_ r: ConfigReader) throws -> GRPOSection {
        let g = try r.section("grpo")
        var s = GRPOSection()
        s.groupSize = try g.int("group_size", default: s.groupSize)
        s.maxNewTokens = try g.int("max_new_tokens", default: s.maxNewTokens)
        s.temperature = try g.double("temperature", default: s.temperature)
        s.topP = try g.double("top_p", default: s.topP)
        s.scaleRewards = GRPOScaleRewards(rawValue: try g.choice("scale_rewards", GRPOScaleRewards.allCases.map(\.rawValue), default: "group"))!
        s.epsilon = try g.double("epsilon", default: s.epsilon)
        s.epsilonHigh = try g.optionalDouble("epsilon_high")
        s.beta = try g.double("beta", default: s.beta)
        s.loss = GRPOLossName(rawValue: try g.choice("loss", GRPOLossName.allCases.map(\.rawValue), default: "grpo"))!
        s.iterations = try g.int("iterations", default: s.iterations)
        s.logCompletions = try g.int("log_completions", default: s.logCompletions)
        s.rewards = try rewardSpecs(g)
        try g.finish()
        return s
    }

    /// grpo.rewards: a list of {type, weight, ...}.
    static func rewardSpecs(_ g: ConfigReader) throws -> [RewardSpec] {
        guard let n = g.raw("rewards") else { return [] }
        guard case .sequence(let items) = n else { throw g.fail("rewards", "expected a list of {type, weight, ...}, got \(g.describe(n))") }
        var specs: [RewardSpec] = []
        for (i, item) in items.enumerated() {
            let f = try ConfigReader(file: g.file, prefix: g.prefix + "rewards[\(i)].", node: item, overridden: [])
            guard f.node("type") != nil else {
                throw MoETuneError.config(path: g.file, key: f.prefix + "type", message: "\(ConfigReader.where(item)): required key is missing (one of \(RewardType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            let type = RewardType(rawValue: try f.choice("type", RewardType.allCases.map(\.rawValue), default: "exact"))!
            let repeats = specs.filter { $0.type == type }.count
            var s = RewardSpec(type: type, name: try f.optionalString("name") ?? (repeats == 0 ? type.rawValue : "\(type.rawValue)_\(repeats + 1)"))
            s.weight = try f.double("weight", default: 1)
            try readRewardKeys(&s, f)
            try f.finish()
            guard !specs.contains(where: { $0.name == s.name }) else { throw f.fail("name", "\"\(s.name)\" names another reward too") }
            specs.append(s)
        }
        return specs
    }

    /// The keys of one reward type (the others are refused by finish()).
    static func readRewardKeys(_ s: inout RewardSpec, _ f: ConfigReader) throws {
        func list(_ key: String) throws -> [String] {
            guard let n = f.raw(key) else { return [] }
            guard case .sequence(let items) = n else { throw f.fail(key, "expected a list of strings, got \(f.describe(n))") }
            return try items.map { item in
                guard case .scalar(let x) = item else { throw f.fail(key, "expected a list of strings") }
                return x.string
            }
        }
        switch s.type {
        case .exact, .numeric:
            s.field = try f.optionalString("field") ?? s.field
            s.marker = try f.optionalString("marker")
            if s.type == .exact { s.boxed = try f.bool("boxed", default: false) } else { s.tolerance = try f.double("tolerance", default: s.tolerance) }
            if s.marker == "" { throw f.fail("marker", "must not be empty") }
        case .regex:
            s.pattern = try f.string("pattern")
            if BoundedRegex(s.pattern!) == nil { throw f.fail("pattern", "not a regular expression this engine reads (no backreferences or scripts)") }
        case .json: s.keys = try list("keys")
        case .length:
            s.maxTokens = try f.int("max_tokens", default: 0)
            s.penalty = try f.double("penalty", default: s.penalty)
            guard s.maxTokens >= 0 else { throw f.fail("max_tokens", "must not be negative") }
        case .format:
            s.template = try f.string("template")
            guard s.template!.contains("...") else { throw f.fail("template", "has no \"...\" (the places where any text may stand)") }
        case .command:
            s.command = try list("command")
            s.timeout = try f.double("timeout_s", default: s.timeout)
            guard !s.command.isEmpty else { throw f.fail("command", "required: the program and its arguments, e.g. [python3, score.py]") }
            guard s.timeout > 0 else { throw f.fail("timeout_s", "must be positive") }
        }
    }

    package func validateGRPO(_ r: ConfigReader) throws {
        let g = try r.section("grpo"), t = try r.section("training")
        guard training.method == .grpo else {
            let keys = ["rewards", "group_size", "max_new_tokens", "temperature", "top_p", "scale_rewards", "epsilon", "epsilon_high",
                        "beta", "loss", "iterations", "log_completions"]
            if let key = keys.first(where: { g.node($0) != nil }) {
                throw g.fail(key, "the grpo section applies to training.method: grpo, but the method is \(training.method.rawValue)")
            }
            return
        }
        let s = grpo
        guard !s.rewards.isEmpty else { throw g.fail("rewards", "required with training.method: grpo: a list of {type, weight, ...} (exact, numeric, regex, json, length, format, command)") }
        guard s.groupSize >= 2, s.groupSize <= 1024 else { throw g.fail("group_size", "must be 2 to 1024 (advantages compare the completions of a prompt), got \(s.groupSize)") }
        guard s.maxNewTokens >= 1 else { throw g.fail("max_new_tokens", "must be at least 1") }
        guard s.temperature > 0 else { throw g.fail("temperature", "must be positive (GRPO samples), got \(s.temperature)") }
        guard s.topP > 0, s.topP <= 1 else { throw g.fail("top_p", "must be in (0, 1], got \(s.topP)") }
        guard s.epsilon >= 0, s.epsilon < 1 else { throw g.fail("epsilon", "must be in [0, 1), got \(s.epsilon)") }
        if let e = s.epsilonHigh, !(e >= 0) { throw g.fail("epsilon_high", "must not be negative") }
        guard s.beta >= 0 else { throw g.fail("beta", "must not be negative") }
        guard s.iterations >= 1, s.iterations <= 1000 else { throw g.fail("iterations", "must be 1 to 1000") }
        guard s.logCompletions >= 0 else { throw g.fail("log_completions", "must not be negative") }
        guard training.gradAccum * training.batchSize * s.groupSize <= 1 << 20 else {
            throw t.fail("batch_size", "batch_size x grad_accum x grpo.group_size is more than \(1 << 20) completions a step")
        }
    }

    /// The grpo: section as YAML (in the resolved config, so a resume with other settings is refused).
    package func grpoYAML(_ q: (String?) -> String) -> String {
        let s = grpo
        func reward(_ r: RewardSpec) -> String {
            var parts = ["type: \(r.type.rawValue)", "name: \(q(r.name))", "weight: \(r.weight)"]
            switch r.type {
            case .exact, .numeric:
                parts += ["field: \(q(r.field))", "marker: \(q(r.marker))"]
                parts.append(r.type == .exact ? "boxed: \(r.boxed)" : "tolerance: \(r.tolerance)")
            case .regex: parts.append("pattern: \(q(r.pattern))")
            case .json: parts.append("keys: [\(r.keys.map { q($0) }.joined(separator: ", "))]")
            case .length: parts += ["max_tokens: \(r.maxTokens)", "penalty: \(r.penalty)"]
            case .format: parts.append("template: \(q(r.template))")
            case .command: parts += ["command: [\(r.command.map { q($0) }.joined(separator: ", "))]", "timeout_s: \(r.timeout)"]
            }
            return "    - {" + parts.joined(separator: ", ") + "}\n"
        }
        return """
        grpo:
          group_size: \(s.groupSize)
          max_new_tokens: \(s.maxNewTokens)
          temperature: \(s.temperature)
          top_p: \(s.topP)
          scale_rewards: \(s.scaleRewards.rawValue)
          epsilon: \(s.epsilon)
          epsilon_high: \(s.epsilonHigh.map { "\($0)" } ?? "null")
          beta: \(s.beta)
          loss: \(s.loss.rawValue)
          iterations: \(s.iterations)
          log_completions: \(s.logCompletions)
          rewards:

        """ + s.rewards.map(reward).joined()
    }
}
