import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

extension GRPORun {
    /// A sampled completion: its tokens (the stop token last when it ended at one, as TRL's
    /// completion mask keeps the EOS), its text (without the stop token) and whether it was cut.
    struct Sampled {
        var tokens: [Int32]
        var text: String
        var truncated: Bool
    }

    /// Samples `options` for each prompt (ids) with the current adapter, no dropout, no router
    /// noise; results in request order.
    func sample(_ prompts: [[Int32]], options: [SamplingOptions]) throws -> [Sampled] {
        let (dropout, training) = (adapters.dropout?.active, model.moe.training)
        adapters.dropout?.active = false
        model.moe.training = false
        defer {
            if let dropout { adapters.dropout?.active = dropout }
            model.moe.training = training
        }
        var out = [Sampled?](repeating: nil, count: prompts.count)
        var failure: Error?
        try generator.run(zip(prompts, options).map { GenerationRequest(prompt: $0, options: $1) }) { id, result in
            do {
                var tokens = result.tokens
                if result.reason == .stop, let stop = result.stopToken { tokens.append(stop) }
                out[id] = Sampled(tokens: tokens, text: try tokenizer.decode(result.tokens), truncated: result.reason == .length)
            } catch { failure = error }
        }
        if let failure { throw failure }
        return out.map { $0! }
    }

    /// Generation g: the prompts of micro-batches g x grad_accum ..< (g + 1) x grad_accum, group_size
    /// completions each (seeded by run seed, g and the completion's index), their rewards, the
    /// advantages (GRPOLoss.advantages over the whole generation batch, so scale_rewards batch
    /// takes its std), old log-probs (iterations > 1: the sampling policy's) and the reference's (beta > 0).
    func generate(_ g: Int) throws -> GRPOGeneration {
        let c = config, gs = c.grpo.groupSize, ga = c.training.gradAccum
        let micro = (0..<ga).map { plan.microBatch(g * ga + $0) }
        let promptIndices = micro.flatMap { $0 }.flatMap { Array(repeating: $0, count: gs) }
        let runSeed = UInt64(bitPattern: Int64(c.training.seed))
        let options = promptIndices.indices.map { k -> SamplingOptions in
            var o = SamplingOptions()
            o.temperature = c.grpo.temperature
            o.topP = c.grpo.topP
            o.maxNewTokens = c.grpo.maxNewTokens
            o.seed = GRPOPlan.seed(run: runSeed, generation: g, completion: k)
            return o
        }
        let sampled = try sample(promptIndices.map { plan.prompts[$0].ids }, options: options)
        var perFunc: [[Double]] = []
        for (k, p) in promptIndices.enumerated() {
            perFunc.append(try rewards.score(prompt: plan.prompts[p], path: trainPath, completion: sampled[k].text, tokens: sampled[k].tokens.count))
        }
        let combined = perFunc.map { rewards.combined($0) }
        let advantages = GRPOLoss.advantages(combined, groupSize: gs, scale: c.grpo.scaleRewards)
        var out: [GRPOGeneration.Micro] = []
        var at = 0
        for mb in micro {
            let n = mb.count * gs, range = at..<(at + n)
            let batch = GRPOBatch(prompts: range.map { plan.prompts[promptIndices[$0]].ids }, completions: range.map { sampled[$0].tokens })
            var m = GRPOGeneration.Micro(batch: batch, advantages: Array(advantages[range]))
            if c.grpo.iterations > 1 { m.old = try step.logps(batch, adapters: adapters, temperature: c.grpo.temperature) }
            if c.grpo.beta != 0 { m.ref = try step.logps(batch, adapters: refAdapters, temperature: c.grpo.temperature) }
            out.append(m)
            at += n
        }
        var metrics = rewardMetrics(perFunc, combined: combined, lengths: sampled.map { $0.tokens.count }, truncated: sampled.map(\.truncated))
        metrics["frac_reward_zero_std"] = zeroStdFraction(combined, groupSize: gs)
        let samples = (0..<min(c.grpo.logCompletions, sampled.count)).map { k -> [String: Any] in
            ["prompt": plan.prompts[promptIndices[k]].text, "completion": sampled[k].text, "reward": combined[k], "advantage": advantages[k]]
        }
        return GRPOGeneration(index: g, micro: out, metrics: metrics, samples: samples)
    }

    /// TRL's reward and length metrics: reward, reward_std (the weighted sum), rewards/NAME/mean
    /// and /std per reward, completions/mean_length, min_length, max_length, clipped_ratio.
    func rewardMetrics(_ perFunc: [[Double]], combined: [Double], lengths: [Int], truncated: [Bool]) -> [String: Double] {
        var m: [String: Double] = [:]
        (m["reward"], m["reward_std"]) = GRPOLoss.meanStd(combined)
        for (i, name) in rewards.names.enumerated() {
            (m["rewards/\(name)/mean"], m["rewards/\(name)/std"]) = GRPOLoss.meanStd(perFunc.map { $0[i] })
        }
        let l = lengths.map(Double.init)
        m["completions/mean_length"] = l.reduce(0, +) / Double(max(l.count, 1))
        m["completions/min_length"] = l.min() ?? 0
        m["completions/max_length"] = l.max() ?? 0
        m["completions/clipped_ratio"] = Double(truncated.filter { $0 }.count) / Double(max(truncated.count, 1))
        return m
    }

    /// Share of completions whose group's rewards are all equal (no learning signal).
    func zeroStdFraction(_ r: [Double], groupSize g: Int) -> Double {
        var zero = 0
        for start in stride(from: 0, to: r.count, by: g) where GRPOLoss.meanStd(Array(r[start..<(start + g)])).std < 1e-8 { zero += g }
        return Double(zero) / Double(max(r.count, 1))
    }

    /// An eval line: one greedy completion per prompt (temperature 0, max_new_tokens), TRL's
    /// reward metrics over them and the first log_completions samples. Returns the mean reward.
    func evaluate(_ ds: GRPODataset, _ split: String, step s: Int) throws -> Double {
        let prompts = config.training.evalBatches.map { Array(ds.prompts.prefix($0 * config.training.batchSize)) } ?? ds.prompts
        var o = SamplingOptions()
        o.maxNewTokens = config.grpo.maxNewTokens
        let sampled = try sample(prompts.map(\.ids), options: Array(repeating: o, count: prompts.count))
        var perFunc: [[Double]] = []
        for (p, x) in zip(prompts, sampled) { perFunc.append(try rewards.score(prompt: p, path: ds.path, completion: x.text, tokens: x.tokens.count)) }
        let combined = perFunc.map { rewards.combined($0) }
        let m = rewardMetrics(perFunc, combined: combined, lengths: sampled.map { $0.tokens.count }, truncated: sampled.map(\.truncated))
        var line: [String: Any] = ["type": "eval", "step": s, "split": split, "prompts": prompts.count]
        for (k, v) in m { line[k] = v }
        line["completions"] = (0..<min(config.grpo.logCompletions, prompts.count)).map { k -> [String: Any] in
            ["prompt": prompts[k].text, "completion": sampled[k].text, "reward": combined[k]]
        }
        try metrics.write(line)
        events.log("\(split) at step \(s): mean reward \(String(format: "%.4f", m["reward"]!)) over \(prompts.count) prompts (greedy)")
        return m["reward"]!
    }
}
