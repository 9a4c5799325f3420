import Foundation
import MoEFormats
import MoEText
import MoEData

/// grpo.rewards as functions: each completion's value of every reward (TRL's rewards_per_func)
/// and their weighted sum.
package final class GRPORewardSet {
    package let specs: [TrainConfig.RewardSpec]
    let configPath: String
    private let regexes: [Int: BoundedRegex]
    private var programs: [Int: RewardProgram] = [:]

    package init(_ specs: [TrainConfig.RewardSpec], configPath: String) {
        self.specs = specs
        self.configPath = configPath
        var r: [Int: BoundedRegex] = [:]
        for (i, s) in specs.enumerated() where s.type == .regex { r[i] = BoundedRegex(s.pattern ?? "") }
        regexes = r
        for (i, s) in specs.enumerated() where s.type == .command {
            programs[i] = RewardProgram(name: s.name, key: "grpo.rewards[\(i)]", configPath: configPath, command: s.command, timeout: s.timeout)
        }
    }

    deinit { for p in programs.values { p.stop() } }

    package var names: [String] { specs.map(\.name) }

    /// Refuses a data line a reward cannot score: exact and numeric need their field (numeric a
    /// number in it). One line naming the file, the line and the reward.
    package func check(_ prompts: [GRPOPrompt], path: String) throws {
        for p in prompts {
            for s in specs where s.type == .exact || s.type == .numeric {
                guard let v = p.fields[s.field] else {
                    throw MoETuneError.line(path: path, line: p.line, message: "reward \"\(s.name)\" (\(s.type.rawValue)) compares with the field \"\(s.field)\", which this line lacks")
                }
                if s.type == .numeric, BuiltinReward.lastNumber(v) == nil {
                    throw MoETuneError.line(path: path, line: p.line, message: "reward \"\(s.name)\" (numeric): the field \"\(s.field)\" holds no number (\"\(v.prefix(40))\")")
                }
            }
        }
    }

    /// Every reward of one completion ([functions]); `tokens`: its token count.
    package func score(prompt p: GRPOPrompt, path: String, completion text: String, tokens: Int) throws -> [Double] {
        try specs.enumerated().map { i, s in
            switch s.type {
            case .exact: return BuiltinReward.exact(text, answer: p.fields[s.field] ?? "", marker: s.marker, boxed: s.boxed)
            case .numeric:
                return BuiltinReward.numeric(text, answer: BuiltinReward.lastNumber(p.fields[s.field] ?? "") ?? .nan, marker: s.marker, tolerance: s.tolerance)
            case .regex: return BuiltinReward.regex(text, regexes[i]!)
            case .json: return BuiltinReward.json(text, keys: s.keys)
            case .length: return BuiltinReward.length(tokens: tokens, maxTokens: s.maxTokens, penalty: s.penalty)
            case .format: return BuiltinReward.format(text, template: s.template ?? "")
            case .command: return try programs[i]!.score(Self.programLine(p, completion: text), line: p.line, path: path)
            }
        }
    }

    /// The line a reward program reads: the data line's fields with "prompt" (the prompt's text)
    /// and "completion" set, one JSON object.
    static func programLine(_ p: GRPOPrompt, completion: String) -> String {
        var object = (try? JSONSerialization.jsonObject(with: Data(p.json.utf8))) as? [String: Any] ?? [:]
        if !(object["prompt"] is [Any]) { object["prompt"] = p.text }
        object["completion"] = completion
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The weighted sum of a completion's rewards (TRL's rewards_per_func · reward_weights).
    package func combined(_ values: [Double]) -> Double {
        zip(values, specs).reduce(0) { $0 + $1.0 * $1.1.weight }
    }
}
