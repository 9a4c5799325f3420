import Foundation
import MoEFormats
import MoEText

/// One projection of a feed-forward block (a dense MLP or an expert): SwiGLU
/// down(silu(gate x) * up x).
public enum FeedForwardPart: Int, CaseIterable, Sendable { case gate, up, down }

/// A linear layer of the decoder as moe-tune addresses it. A family says what each is
/// called on disk and in PEFT.
public enum LinearSlot: Hashable, Sendable {
    case q, k, v, o
    case mlp(FeedForwardPart)
    case router
    case expert(Int, FeedForwardPart)
    /// The shared expert (Qwen2-MoE) and its sigmoid gate [1, H].
    case shared(FeedForwardPart)
    case sharedGate
    case head

    /// The user's LoRA target kind of this slot.
    public var kind: ModuleKind {
        switch self {
        case .q: return .query
        case .k: return .key
        case .v: return .value
        case .o: return .projection
        case .mlp, .expert: return .mlp
        case .router: return .router
        case .shared, .sharedGate: return .sharedExpert
        case .head: return .head
        }
    }
}

/// Where a Mixture-of-Experts block's tensors live on disk.
public struct MoENames: Sendable {
    /// Module of the block in the per-expert layout: "block_sparse_moe" (Mixtral), "mlp" (Qwen-MoE, OLMoE).
    public var block: String
    /// Router module inside the block.
    public var router = "gate"
    /// An expert's gate, up and down projections: ["w1", "w3", "w2"] (Mixtral) or
    /// ["gate_proj", "up_proj", "down_proj"].
    public var expertParts: [String]
    /// Block of transformers 5's fused layout: router "mlp.gate", experts
    /// "mlp.experts.gate_up_proj" [E, 2*inter, hidden] (rows 0..<inter gate, the rest up)
    /// and "mlp.experts.down_proj" [E, hidden, inter].
    public var fusedBlock = "mlp"
    /// Shared expert module inside the block and its gate (Qwen2-MoE); nil: none.
    public var sharedExpert: String? = nil
    public var sharedExpertGate: String? = nil
    /// The fused tensors under the family's own checkpoint names, inside the block, where
    /// they differ from transformers 5's (Granite: "router.layer", "input_linear",
    /// "output_linear", each + ".weight"); nil: checkpoints use transformers 5's names.
    public var checkpointFused: FusedNames? = nil
    /// GPT-OSS: the fused experts are stored transposed with gate and up interleaved,
    /// gate_up_proj [E, H, 2I] (columns 2i gate, 2i+1 up) and down_proj [E, I, H], each
    /// with a bias (gate_up_proj_bias [E, 2I], down_proj_bias [E, H]).
    public var transposedInterleaved = false
    /// How moe-tune writes adapters of this block for peft 0.21 on transformers 5, whose
    /// experts are fused 3-D parameters and whose routers are not Linear modules: true (every
    /// family today) writes the experts in peft's fused `target_parameters` layout and the
    /// router, shared-expert and dense-MLP adapters as `target_parameters` on their 2-D
    /// weights (PEFTAdapter.save); false: per-expert module names in `target_modules`.
    public var peftFusedLayout = true
    /// config.json's key of the expert count this family writes (pruning rewrites it, and
    /// every other key of `expertCountKeys` the file has).
    public var expertCountKey = "num_experts"
    /// Every config.json key that holds an expert count in some family's files.
    public static let expertCountKeys = ["num_experts", "num_local_experts", "n_routed_experts"]
    /// config.json's key of the experts chosen per token.
    public static let topKKey = "num_experts_per_tok"

    public struct FusedNames: Sendable {
        public var router: String
        public var gateUp: String
        public var down: String
    }
}

/// Defaults of config.json fields the file may omit: those of the transformers
/// configuration class of the family.
public struct FamilyDefaults: Sendable {
    public var rmsNormEps: Double = 1e-6
    public var ropeTheta: Double = 10000
    public var maxPositionEmbeddings = 4096
    public var tieWordEmbeddings = false
    public var bosTokenId: Int? = 1
    public var eosTokenId: Int = 2
    public var routerAuxLossCoef: Double = 0.001
    /// head_dim when the file omits it; nil: hidden_size / num_attention_heads.
    public var headDim: Int? = nil
}

/// Everything moe-tune knows about one model family, in one value: its model_type(s),
/// its config.json fields and their defaults, its tensor names on disk (per-expert and
/// transformers 5's fused layout), its module paths for PEFT and which slots a layer
/// has. Every other file asks a family for names; none spells a Hugging Face name.
/// One file per family under Model/Families/ builds its value; `ModelFamily.all` lists them.
public struct ModelFamily: Sendable, CustomStringConvertible, Equatable {
    /// moe-tune's name of the family (the first model_type).
    public let name: String
    public let modelTypes: [String]
    /// nil: every layer has a dense MLP.
    public let moe: MoENames?
    public let defaults: FamilyDefaults
    /// The modules of the q, k, v and o slots inside self_attn (DeepSeek-V2: q_proj,
    /// kv_a_proj_with_mqa, kv_b_proj, o_proj).
    public var attentionModules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    /// Reads the family's own config.json fields (after the shared Llama fields) and
    /// refuses, naming it, any field of the family that moe-tune does not implement.
    package let readConfig: @Sendable (FieldReader, inout ModelConfig) throws -> Void
    /// llama.cpp's `general.architecture` for this family's GGUF files (Families/GGUFLayout.swift); nil: not read from GGUF.
    public var ggufArchitecture: String? = nil

    public var description: String { name }
    public static func == (a: ModelFamily, b: ModelFamily) -> Bool { a.name == b.name }

    /// Every supported family.
    public static let all: [ModelFamily] = [.llama, .mistral, .mixtral, .qwen2, .qwen3, .qwen2MoE, .qwen3MoE, .olmoe, .graniteMoE, .deepseekV2, .gptOss, .seedOss]

    public static var supportedModelTypes: [String] { all.flatMap(\.modelTypes) }

    public static func forModelType(_ type: String) -> ModelFamily? {
        all.first { $0.modelTypes.contains(type) }
    }
}

// MARK: - Tensor names and module paths (the Llama layout every family shares)

extension ModelFamily {
    public var embedTokens: String { "model.embed_tokens.weight" }
    public var finalNorm: String { "model.norm.weight" }
    public var lmHead: String { module(.head, layer: 0) + ".weight" }

    public func layerPrefix(_ l: Int) -> String { "model.layers.\(l)." }
    public func inputNorm(_ l: Int) -> String { layerPrefix(l) + "input_layernorm.weight" }
    public func postAttentionNorm(_ l: Int) -> String { layerPrefix(l) + "post_attention_layernorm.weight" }
    /// GPT-OSS's attention sinks [nH].
    public func sinks(_ l: Int) -> String { layerPrefix(l) + "self_attn.sinks" }
    public func qNorm(_ l: Int) -> String { layerPrefix(l) + "self_attn.q_norm.weight" }
    public func kNorm(_ l: Int) -> String { layerPrefix(l) + "self_attn.k_norm.weight" }
    /// DeepSeek-V2's RMSNorm of the compressed key/value [kv_lora_rank].
    public func kvANorm(_ l: Int) -> String { layerPrefix(l) + "self_attn.kv_a_layernorm.weight" }
    /// DeepSeek-V2 with q_lora_rank: the frozen down-projection of the query and its RMSNorm.
    public func qAProj(_ l: Int) -> String { layerPrefix(l) + "self_attn.q_a_proj.weight" }
    public func qANorm(_ l: Int) -> String { layerPrefix(l) + "self_attn.q_a_layernorm.weight" }

    private static let denseParts = ["gate_proj", "up_proj", "down_proj"]

    /// The PEFT module path of a linear layer (its checkpoint tensor is path + ".weight").
    public func module(_ slot: LinearSlot, layer l: Int) -> String {
        let p = layerPrefix(l)
        switch slot {
        case .q: return p + "self_attn." + attentionModules[0]
        case .k: return p + "self_attn." + attentionModules[1]
        case .v: return p + "self_attn." + attentionModules[2]
        case .o: return p + "self_attn." + attentionModules[3]
        case .mlp(let part): return p + "mlp." + Self.denseParts[part.rawValue]
        case .router: return p + (moe?.block ?? "mlp") + "." + (moe?.router ?? "gate")
        case .expert(let e, let part):
            let m = moe ?? MoENames(block: "mlp", expertParts: Self.denseParts)
            return p + m.block + ".experts.\(e)." + m.expertParts[part.rawValue]
        case .shared(let part):
            return p + (moe?.block ?? "mlp") + "." + (moe?.sharedExpert ?? "shared_expert") + "." + Self.denseParts[part.rawValue]
        case .sharedGate: return p + (moe?.block ?? "mlp") + "." + (moe?.sharedExpertGate ?? "shared_expert_gate")
        case .head: return "lm_head"
        }
    }

    /// The checkpoint tensor of a linear layer's weight [out, in].
    public func weight(_ slot: LinearSlot, layer l: Int) -> String { module(slot, layer: l) + ".weight" }
    /// The checkpoint tensor of a linear layer's bias [out].
    public func bias(_ slot: LinearSlot, layer l: Int) -> String { module(slot, layer: l) + ".bias" }

    /// The layer and slot of a module path in moe-tune's (per-expert) naming.
    public func parse(module: String) -> (layer: Int, slot: LinearSlot)? {
        if module == "lm_head" { return (0, .head) }
        let parts = module.split(separator: ".").map(String.init)
        guard parts.count >= 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]), l >= 0 else { return nil }
        let rest = parts[3...].joined(separator: ".")
        if rest.hasPrefix("self_attn."), let i = attentionModules.firstIndex(of: String(rest.dropFirst("self_attn.".count))) {
            return (l, [LinearSlot.q, .k, .v, .o][i])
        }
        if let m = moe {
            if rest == m.block + "." + m.router { return (l, .router) }
            if let se = m.sharedExpert, rest.hasPrefix(m.block + "." + se + "."),
               let i = Self.denseParts.firstIndex(of: String(rest.dropFirst(m.block.count + se.count + 2))) {
                return (l, .shared(FeedForwardPart(rawValue: i)!))
            }
            if let sg = m.sharedExpertGate, rest == m.block + "." + sg { return (l, .sharedGate) }
            let prefix = m.block + ".experts."
            if rest.hasPrefix(prefix) {
                let sub = rest.dropFirst(prefix.count).split(separator: ".")
                guard sub.count == 2, let e = Int(sub[0]), e >= 0,
                      let i = m.expertParts.firstIndex(of: String(sub[1])) else { return nil }
                return (l, .expert(e, FeedForwardPart(rawValue: i)!))
            }
        }
        if parts.count == 5, parts[3] == "mlp", let i = Self.denseParts.firstIndex(of: parts[4]) {
            return (l, .mlp(FeedForwardPart(rawValue: i)!))
        }
        return nil
    }

    /// The LoRA target kind of a module path.
    public func kind(of module: String) -> ModuleKind? { parse(module: module)?.slot.kind }

    /// The suffix PEFT's target_modules matches for a module ("q_proj", "w1", "gate"); the
    /// shared expert's projections keep their parent ("shared_expert.gate_proj"), so that
    /// an adapter of the shared expert does not also match a dense layer's gate_proj.
    public func targetSuffix(_ module: String) -> String {
        let parts = module.split(separator: ".")
        if case .shared? = parse(module: module)?.slot, parts.count >= 2 {
            return parts.suffix(2).joined(separator: ".")
        }
        return String(parts.last ?? Substring(module))
    }

    // Fused expert layout of transformers 5.
    public func fusedRouter(_ l: Int) -> String { layerPrefix(l) + (moe?.fusedBlock ?? "mlp") + "." + (moe?.router ?? "gate") + ".weight" }
    /// The fused experts module of layer l and its two tensors.
    public func fusedExperts(_ l: Int) -> String { layerPrefix(l) + (moe?.fusedBlock ?? "mlp") + ".experts" }
    public func fusedGateUp(_ l: Int) -> String { fusedExperts(l) + ".gate_up_proj" }
    public func fusedDown(_ l: Int) -> String { fusedExperts(l) + ".down_proj" }

    /// The fused tensors of layer l under the family's own checkpoint names (Granite's
    /// input_linear / output_linear / router.layer), or nil where it has none.
    public func checkpointFused(_ l: Int) -> (router: String, gateUp: String, down: String)? {
        guard let m = moe, let n = m.checkpointFused else { return nil }
        let p = layerPrefix(l) + m.block + "."
        return (p + n.router + ".weight", p + n.gateUp + ".weight", p + n.down + ".weight")
    }

    /// The router, gate_up and down tensors of layer l in whichever fused layout a
    /// checkpoint holds (`contains` its tensor names), or nil for per-expert tensors.
    public func fusedTensors(_ l: Int, contains: (String) -> Bool) -> (router: String, gateUp: String, down: String)? {
        if contains(fusedGateUp(l)) { return (fusedRouter(l), fusedGateUp(l), fusedDown(l)) }
        if let c = checkpointFused(l), contains(c.gateUp) { return c }
        return nil
    }

    /// The layer of a fused expert tensor name in either fused layout (gate_up: true for
    /// gate_up_proj / input_linear), or nil.
    public func fusedExpertTensor(_ name: String) -> (layer: Int, gateUp: Bool)? {
        guard moe != nil else { return nil }
        let parts = name.split(separator: ".")
        guard parts.count > 3, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]) else { return nil }
        if name == fusedGateUp(l) || name == checkpointFused(l)?.gateUp { return (l, true) }
        if name == fusedDown(l) || name == checkpointFused(l)?.down { return (l, false) }
        return nil
    }

    /// Maps a module path of transformers 5's layout onto moe-tune's: Mixtral's router
    /// is "mlp.gate" there and "block_sparse_moe.gate" in checkpoints; Granite's router is
    /// "block_sparse_moe.router.layer" in its checkpoints.
    public func canonicalModule(_ module: String) -> String {
        guard let m = moe else { return module }
        if let n = m.checkpointFused {
            let own = "." + m.block + "." + n.router
            if module.hasSuffix(own) { return String(module.dropLast(own.count)) + "." + m.block + "." + m.router }
        }
        guard m.fusedBlock != m.block else { return module }
        let fused = "." + m.fusedBlock + "." + m.router
        if module.hasSuffix(fused) { return String(module.dropLast(fused.count)) + "." + m.block + "." + m.router }
        return module
    }

    /// The transformers 5 name of a router module.
    public func transformers5Module(_ module: String) -> String {
        guard let m = moe else { return module }
        return module.replacingOccurrences(of: "." + m.block + "." + m.router, with: "." + m.fusedBlock + "." + m.router)
    }

    /// peft's fused-expert adapter modules (transformers 5, target_parameters):
    /// "model.layers.N.mlp.experts.base_layer" holds gate_up_proj's adapter and
    /// "model.layers.N.mlp.experts" holds down_proj's.
    public func fusedExpertAdapter(_ module: String) -> (layer: Int, gateUp: Bool)? {
        guard let m = moe else { return nil }
        let parts = module.split(separator: ".")
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              parts[3] == Substring(m.fusedBlock), parts[4] == "experts" else { return nil }
        if parts.count == 5 { return (l, false) }
        if parts.count == 6, parts[5] == "base_layer" { return (l, true) }
        return nil
    }

    /// The inverse of `fusedExpertAdapter`: peft's adapter modules of layer l's fused
    /// experts when both parameters are targeted (gate_up_proj, registered first, is the
    /// inner ParamWrapper "experts.base_layer"; down_proj the outer "experts").
    public func fusedExpertAdapterModules(_ l: Int) -> (gateUp: String, down: String) {
        let experts = layerPrefix(l) + (moe?.fusedBlock ?? "mlp") + ".experts"
        return (experts + ".base_layer", experts)
    }

    /// Whether an adapter slot is written as a `target_parameters` entry rather than a
    /// `target_modules` suffix (see MoENames.peftFusedLayout).
    public func isPEFTParameterSlot(_ slot: LinearSlot) -> Bool {
        guard moe?.peftFusedLayout == true else { return false }
        switch slot {
        case .mlp, .router, .expert, .shared, .sharedGate: return true
        case .q, .k, .v, .o, .head: return false
        }
    }

    /// Whether a checkpoint tensor is a linear weight of a decoder layer (what NF4 quantizes);
    /// `keepExperts` leaves the experts in full precision.
    public func isDecoderLinearWeight(_ name: String, keepExperts: Bool) -> Bool {
        guard name.hasSuffix(".weight"), let (_, slot) = parse(module: String(name.dropLast(".weight".count))) else { return false }
        switch slot {
        case .q, .k, .v, .o, .mlp, .shared: return true
        case .expert: return !keepExperts
        case .router, .sharedGate, .head: return false
        }
    }

    /// Module names bitsandbytes should skip to keep the experts in full precision.
    public var expertBlockModule: String { moe?.block ?? "mlp" }
}
