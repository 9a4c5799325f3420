import Foundation
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Writes a small random Hugging Face-style model folder (config.json + model.safetensors)
/// for tests that need a model with particular properties; no tokenizer.
enum TinyModel {
    static func make(dir: String, moe: Bool, hidden: Int = 16, inter: Int = 24, layers: Int = 2, heads: Int = 4,
                     kvHeads: Int = 2, experts: Int = 4, topK: Int = 2, vocab: Int = 40, seed: UInt64 = 1,
                     tied: Bool = false, skewedRouter: Bool = false, tokenizer: String? = nil,
                     qwen2MoE: Bool = false) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var config: [String: Any] = [
            "model_type": moe ? "mixtral" : "llama", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvHeads,
            "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
            "max_position_embeddings": 64,
        ]
        if moe { config["num_local_experts"] = experts; config["num_experts_per_tok"] = topK }
        if qwen2MoE {
            // Qwen2-MoE: shared expert, top-k weights not renormalised, layer 1 dense, q/k/v biases.
            config["model_type"] = "qwen2_moe"
            config["num_experts"] = experts
            config["moe_intermediate_size"] = inter / 2
            config["shared_expert_intermediate_size"] = inter
            config["norm_topk_prob"] = false
            config["mlp_only_layers"] = [1]
        }
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/config.json"))
        var rng = SplitMix64(seed: seed)
        var w = SafeTensorsWriter()
        func add(_ name: String, _ shape: [Int], scale: Float = 0.3, around: Float = 0) {
            let n = shape.reduce(1, *)
            w.add(.init(name: name, shape: shape, floats: (0..<n).map { _ in around + (rng.nextFloat() * 2 - 1) * scale }))
        }
        let d = hidden / heads
        let f: ModelFamily = qwen2MoE ? .qwen2MoE : moe ? .mixtral : .llama
        // A skewed router: positive embeddings keep the residual stream mostly positive,
        // and router row 0 is all +0.25, so expert 0 wins for nearly every token.
        add(f.embedTokens, [vocab, hidden], scale: skewedRouter ? 0.5 : 1, around: skewedRouter ? 1 : 0)
        add(f.finalNorm, [hidden], scale: 0.2, around: 1)
        if !tied { add(f.lmHead, [vocab, hidden]) }
        for l in 0..<layers {
            add(f.inputNorm(l), [hidden], scale: 0.2, around: 1)
            add(f.postAttentionNorm(l), [hidden], scale: 0.2, around: 1)
            add(f.weight(.q, layer: l), [heads * d, hidden])
            add(f.weight(.k, layer: l), [kvHeads * d, hidden])
            add(f.weight(.v, layer: l), [kvHeads * d, hidden])
            add(f.weight(.o, layer: l), [hidden, heads * d])
            if qwen2MoE {
                for slot in [LinearSlot.q, .k, .v] { add(f.bias(slot, layer: l), [(slot == .q ? heads : kvHeads) * d]) }
            }
            if qwen2MoE && l == 1 {
                add(f.weight(.mlp(.gate), layer: l), [inter, hidden])
                add(f.weight(.mlp(.up), layer: l), [inter, hidden])
                add(f.weight(.mlp(.down), layer: l), [hidden, inter])
            } else if qwen2MoE {
                add(f.weight(.router, layer: l), [experts, hidden], scale: 1)
                for e in 0..<experts {
                    add(f.weight(.expert(e, .gate), layer: l), [inter / 2, hidden])
                    add(f.weight(.expert(e, .up), layer: l), [inter / 2, hidden])
                    add(f.weight(.expert(e, .down), layer: l), [hidden, inter / 2])
                }
                add(f.weight(.shared(.gate), layer: l), [inter, hidden])
                add(f.weight(.shared(.up), layer: l), [inter, hidden])
                add(f.weight(.shared(.down), layer: l), [hidden, inter])
                add(f.weight(.sharedGate, layer: l), [1, hidden])
            } else if moe {
                if skewedRouter {
                    let rows = (0..<(experts * hidden)).map { i in i < hidden ? Float(0.25) : (rng.nextFloat() * 2 - 1) * 0.3 }
                    w.add(.init(name: f.weight(.router, layer: l), shape: [experts, hidden], floats: rows))
                } else {
                    add(f.weight(.router, layer: l), [experts, hidden], scale: 1)
                }
                for e in 0..<experts {
                    add(f.weight(.expert(e, .gate), layer: l), [inter, hidden])
                    add(f.weight(.expert(e, .up), layer: l), [inter, hidden])
                    add(f.weight(.expert(e, .down), layer: l), [hidden, inter])
                }
            } else {
                add(f.weight(.mlp(.gate), layer: l), [inter, hidden])
                add(f.weight(.mlp(.up), layer: l), [inter, hidden])
                add(f.weight(.mlp(.down), layer: l), [hidden, inter])
            }
        }
        try w.write(to: dir + "/model.safetensors")
        if let tokenizer { try FileManager.default.copyItem(atPath: tokenizer, toPath: dir + "/tokenizer.model") }
    }
}
