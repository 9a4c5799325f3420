import Foundation
import MoEFormats
import MoEText

/// DeepSeek-V2 (and V2-Lite), as transformers 5's modeling_deepseek_v2 computes it.
/// Attention is multi-head latent attention (Layers/MLA.swift): q = q_proj(x) per head
/// [nope | rope] (`q_lora_rank` null, as in V2-Lite), or q_b_proj(q_a_layernorm(q_a_proj(x)));
/// kv_a_proj_with_mqa(x) = [c | k_rope], c normalised by kv_a_layernorm, kv_b_proj(c) = per
/// head [k_nope | v]; RoPE on the rope parts only, interleaved (dims 2i, 2i+1 pair), over
/// qk_rope_head_dim; the softmax scale (nope + rope)^-1/2, times mscale(factor,
/// mscale_all_dim)^2 when the RoPE parameters have a non-default type and mscale_all_dim.
/// Layers l >= `first_k_dense_replace` are MoE: softmax over `n_routed_experts` logits,
/// greedy or group-limited greedy top-k (n_group, topk_group), the k probabilities times
/// `routed_scaling_factor`, not renormalised; plus `n_shared_experts` shared experts as one
/// SwiGLU of n_shared_experts * moe_intermediate_size, added without a gate.
/// transformers 5 computes no auxiliary loss for DeepSeek-V2 (the remote code's
/// aux_loss_alpha / seq_aux are not read by it), so the default coefficient is 0.
/// Tensors: self_attn.{q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj},
/// mlp.gate, mlp.experts.E.{gate,up,down}_proj (or fused), mlp.shared_experts.*.
/// LoRA targets: query = q_proj (q_b_proj with q_lora_rank; q_a_proj stays frozen),
/// key = kv_a_proj_with_mqa, value = kv_b_proj.
extension ModelFamily {
    public static let deepseekV2 = ModelFamily(
        name: "deepseek_v2", modelTypes: ["deepseek_v2"],
        moe: MoENames(block: "mlp", router: "gate", expertParts: ["gate_proj", "up_proj", "down_proj"], fusedBlock: "mlp",
                      sharedExpert: "shared_experts", sharedExpertGate: nil, expertCountKey: "n_routed_experts"),
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048,
                                 bosTokenId: 1, eosTokenId: 2, routerAuxLossCoef: 0),
        attentionModules: ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
        readConfig: { r, c in
            func positive(_ key: String, _ fallback: Int?) throws -> Int {
                guard let v = try r.optionalInt(key) ?? fallback else {
                    throw MoETuneError.config(path: r.path, key: key, message: "required field is missing")
                }
                guard v > 0 else { throw MoETuneError.config(path: r.path, key: key, message: "must be positive, got \(v)") }
                return v
            }
            // q_lora_rank (DeepSeek-V2): the query slot is q_b_proj, behind the frozen q_a_proj
            // and q_a_layernorm; null (V2-Lite): q_proj.
            let qLoraRank = try r.optionalInt("q_lora_rank")
            if let q = qLoraRank {
                guard q > 0 else { throw MoETuneError.config(path: r.path, key: "q_lora_rank", message: "must be positive or null") }
                c.family.attentionModules[0] = "q_b_proj"
            }
            try r.refuse("attention_bias", message: "biases in attention layers are not supported for deepseek_v2")
            try r.refuse("mlp_bias", message: "biases in MLP layers are not supported")
            try r.refuse("norm_topk_prob", message: "transformers 5 does not renormalise DeepSeek-V2's top-k weights; true is not supported")
            if let f = try r.optionalInt("moe_layer_freq"), f != 1 {
                throw MoETuneError.config(path: r.path, key: "moe_layer_freq", message: "only 1 is supported (transformers 5 reads no other), got \(f)")
            }
            if let ep = try r.optionalInt("ep_size"), ep != 1 {
                throw MoETuneError.config(path: r.path, key: "ep_size", message: "only 1 is supported, got \(ep)")
            }
            if let s = try r.optionalString("scoring_func"), s != "softmax" {
                throw MoETuneError.config(path: r.path, key: "scoring_func", message: "only softmax is supported, got \(Printable.quoted(s))")
            }
            let mla = MLAShape(qLoraRank: qLoraRank, kvLoraRank: try positive("kv_lora_rank", 512), nopeDim: try positive("qk_nope_head_dim", 128),
                               ropeDim: try positive("qk_rope_head_dim", 64), valueDim: try positive("v_head_dim", 128))
            guard mla.ropeDim % 2 == 0 else {
                throw MoETuneError.config(path: r.path, key: "qk_rope_head_dim", message: "must be even, got \(mla.ropeDim)")
            }
            guard mla.valueDim <= mla.qkDim else {
                throw MoETuneError.config(path: r.path, key: "v_head_dim",
                    message: "\(mla.valueDim) wider than qk_nope_head_dim + qk_rope_head_dim (\(mla.qkDim)) is not supported")
            }
            if c.numKVHeads != c.numHeads {
                throw MoETuneError.config(path: r.path, key: "num_key_value_heads",
                    message: "must equal num_attention_heads for deepseek_v2 (kv_b_proj has one key and value per head)")
            }
            c.mla = mla
            c.headDim = mla.qkDim
            c.slidingWindow = nil
            // The softmax scale: transformers' yarn_apply_mscale.
            var scale = 1 / Double(mla.qkDim).squareRoot()
            for key in ["rope_parameters", "rope_scaling"] {
                guard let d = r.json[key] as? [String: Any] else { continue }
                let type = (d["rope_type"] ?? d["type"]) as? String ?? "default"
                if type != "default", let mAll = (d["mscale_all_dim"] as? NSNumber)?.doubleValue, mAll != 0,
                   let factor = (d["factor"] as? NSNumber)?.doubleValue {
                    let m = factor <= 1 ? 1 : 0.1 * mAll * Foundation.log(factor) + 1
                    scale *= m * m
                }
                break
            }
            c.attentionMultiplier = Float(scale)
            let countKey = r.json["n_routed_experts"] != nil ? "n_routed_experts" : "num_experts"
            try r.readExperts(&c, countKey: countKey, defaultCount: 64, defaultTopK: 6)
            c.expertIntermediateSize = try positive("moe_intermediate_size", 1407)
            c.normTopKProb = false
            let shared = try r.optionalInt("n_shared_experts") ?? 2
            guard shared >= 0 else { throw MoETuneError.config(path: r.path, key: "n_shared_experts", message: "must not be negative") }
            c.sharedExpertIntermediateSize = shared * c.expertIntermediateSize
            let firstDense = try r.optionalInt("first_k_dense_replace") ?? 0
            guard firstDense >= 0 else { throw MoETuneError.config(path: r.path, key: "first_k_dense_replace", message: "must not be negative") }
            c.mlpOnlyLayers = Array(0..<min(firstDense, max(c.numLayers, 0)))
            let scaling = try r.optionalDouble("routed_scaling_factor") ?? 1
            guard scaling.isFinite, scaling > 0 else {
                throw MoETuneError.config(path: r.path, key: "routed_scaling_factor", message: "must be a positive number")
            }
            c.routedScalingFactor = Float(scaling)
            switch try r.optionalString("topk_method") ?? "greedy" {
            case "greedy": break
            case "group_limited_greedy":
                let g = try positive("n_group", nil), top = try positive("topk_group", nil)
                guard g <= 64, c.numExperts % g == 0, top <= g, top * (c.numExperts / g) >= c.expertsPerToken else {
                    throw MoETuneError.config(path: r.path, key: "n_group",
                        message: "\(g) groups with topk_group \(top) must divide the \(c.numExperts) experts and leave at least num_experts_per_tok of them")
                }
                c.expertGroups = ExpertGroups(groups: g, topGroups: top)
            case let m:
                throw MoETuneError.config(path: r.path, key: "topk_method", message: "\(Printable.quoted(m)) is not supported (greedy, group_limited_greedy)")
            }
        })
}
