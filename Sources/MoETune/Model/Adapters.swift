import Foundation

/// Which linear layers carry LoRA adapters. Names are the config's module kinds.
public enum ModuleKind: String, CaseIterable, Sendable, Codable {
    case query, key, value, projection, mlp, router, head
}

/// Which decoder layers get adapters.
public enum LayerSelection: Equatable, Sendable {
    case all
    case last(Int)
    case list([Int])

    func contains(_ l: Int, of total: Int) -> Bool {
        switch self {
        case .all: return true
        case .last(let n): return l >= total - n
        case .list(let ls): return ls.contains(l)
        }
    }
}

/// Rank and alpha of one module kind.
public struct LoRAShape: Equatable, Sendable {
    public var rank: Int
    public var alpha: Double
    public init(rank: Int, alpha: Double) { self.rank = rank; self.alpha = alpha }
}

/// What to adapt and how; resolved from the YAML config or a PEFT adapter_config.json.
public struct LoRASpec: Equatable, Sendable {
    public var rank: Int
    public var alpha: Double
    public var dropout: Double
    public var rslora: Bool
    public var targets: Set<ModuleKind>
    public var layers: LayerSelection
    /// Per-kind rank/alpha overrides.
    public var overrides: [ModuleKind: LoRAShape]

    public init(rank: Int = 8, alpha: Double = 16, dropout: Double = 0, rslora: Bool = false,
                targets: Set<ModuleKind> = [.query, .key, .value, .projection],
                layers: LayerSelection = .all, overrides: [ModuleKind: LoRAShape] = [:]) {
        self.rank = rank; self.alpha = alpha; self.dropout = dropout; self.rslora = rslora
        self.targets = targets; self.layers = layers; self.overrides = overrides
    }

    public func shape(of kind: ModuleKind) -> LoRAShape {
        overrides[kind] ?? LoRAShape(rank: rank, alpha: alpha)
    }

    public func scale(of kind: ModuleKind) -> Float {
        let s = shape(of: kind)
        return Float(rslora ? s.alpha / Double(s.rank).squareRoot() : s.alpha / Double(s.rank))
    }
}

/// Flat storage of every trainable number (llm.c style): parameters and gradients each
/// live in one allocation, sliced by the adapters.
public final class ParameterStore: @unchecked Sendable {
    public let params: FloatBuffer
    public let grads: FloatBuffer
    public var count: Int { params.count }

    init(count: Int) {
        params = FloatBuffer(count: count)
        grads = FloatBuffer(count: count)
    }

    public func zeroGrads() { grads.zero() }
}

/// Adapters of one expert (Mixtral w1 = gate, w3 = up, w2 = down).
public struct FeedForwardAdapters: Sendable {
    public var gate: LoRAAdapter?
    public var up: LoRAAdapter?
    public var down: LoRAAdapter?
    public var isEmpty: Bool { gate == nil && up == nil && down == nil }
}

/// Adapters of one decoder layer; nil where a module has none.
public struct LayerAdapters: Sendable {
    public var q: LoRAAdapter?
    public var k: LoRAAdapter?
    public var v: LoRAAdapter?
    public var o: LoRAAdapter?
    public var mlp = FeedForwardAdapters()
    public var experts: [FeedForwardAdapters] = []
    public var router: LoRAAdapter?
}

/// Every adapter of a model, in one ParameterStore.
public final class AdapterSet: @unchecked Sendable {
    public let spec: LoRASpec
    public let store: ParameterStore
    public let layers: [LayerAdapters]
    public let head: LoRAAdapter?
    /// All adapters in a fixed order (for saving, norms and tests).
    public let all: [LoRAAdapter]
    public let maxRank: Int

    /// Lays out adapters for `spec` on `model`. A is initialised kaiming-uniform
    /// (bound 1/sqrt(in), as PEFT does), B with zeros; `seed` makes it reproducible.
    public init(model: Transformer, spec: LoRASpec, seed: UInt64) throws {
        let c = model.config
        if spec.targets.contains(.router), !c.isMoE {
            throw MoETuneError.invalid("lora targets 'router' but \(c.family.rawValue) models have no router")
        }
        // First pass: sizes.
        struct Slot { var module: String; var kind: ModuleKind; var out: Int; var inp: Int }
        var slots: [Slot] = []
        for l in 0..<c.numLayers where spec.layers.contains(l, of: c.numLayers) {
            let w = model.layers[l]
            let p = WeightNames.layerPrefix(l)
            if spec.targets.contains(.query) { slots.append(Slot(module: p + "self_attn.q_proj", kind: .query, out: w.q.rows, inp: w.q.cols)) }
            if spec.targets.contains(.key) { slots.append(Slot(module: p + "self_attn.k_proj", kind: .key, out: w.k.rows, inp: w.k.cols)) }
            if spec.targets.contains(.value) { slots.append(Slot(module: p + "self_attn.v_proj", kind: .value, out: w.v.rows, inp: w.v.cols)) }
            if spec.targets.contains(.projection) { slots.append(Slot(module: p + "self_attn.o_proj", kind: .projection, out: w.o.rows, inp: w.o.cols)) }
            if spec.targets.contains(.mlp) {
                if let m = w.mlp {
                    slots.append(Slot(module: p + "mlp.gate_proj", kind: .mlp, out: m.gate.rows, inp: m.gate.cols))
                    slots.append(Slot(module: p + "mlp.up_proj", kind: .mlp, out: m.up.rows, inp: m.up.cols))
                    slots.append(Slot(module: p + "mlp.down_proj", kind: .mlp, out: m.down.rows, inp: m.down.cols))
                }
                for (e, x) in w.experts.enumerated() {
                    let ep = p + "block_sparse_moe.experts.\(e)."
                    slots.append(Slot(module: ep + "w1", kind: .mlp, out: x.gate.rows, inp: x.gate.cols))
                    slots.append(Slot(module: ep + "w3", kind: .mlp, out: x.up.rows, inp: x.up.cols))
                    slots.append(Slot(module: ep + "w2", kind: .mlp, out: x.down.rows, inp: x.down.cols))
                }
            }
            if spec.targets.contains(.router), let r = w.router {
                slots.append(Slot(module: p + "block_sparse_moe.gate", kind: .router, out: r.rows, inp: r.cols))
            }
        }
        if spec.targets.contains(.head) {
            slots.append(Slot(module: "lm_head", kind: .head, out: model.lmHead.rows, inp: model.lmHead.cols))
        }
        for s in slots {
            let r = spec.shape(of: s.kind).rank
            guard r >= 1, r <= min(s.out, s.inp) else {
                throw MoETuneError.invalid("lora rank \(r) for \(s.module) must be between 1 and \(min(s.out, s.inp)) (the layer is [\(s.out), \(s.inp)])")
            }
        }
        let total = slots.reduce(0) { $0 + spec.shape(of: $1.kind).rank * ($1.inp + $1.out) }
        let store = ParameterStore(count: total)
        var rng = SplitMix64(seed: seed)
        var offset = 0
        var byModule: [String: LoRAAdapter] = [:]
        var all: [LoRAAdapter] = []
        for s in slots {
            let shape = spec.shape(of: s.kind)
            let r = shape.rank
            let a = store.params.pointer + offset, ga = store.grads.pointer + offset
            offset += r * s.inp
            let b = store.params.pointer + offset, gb = store.grads.pointer + offset
            offset += r * s.out
            let bound = 1 / Float(s.inp).squareRoot()
            for i in 0..<(r * s.inp) { a[i] = (rng.nextFloat() * 2 - 1) * bound }
            let adapter = LoRAAdapter(module: s.module, rank: r, inFeatures: s.inp, outFeatures: s.out,
                                      scale: spec.scale(of: s.kind), a: a, b: b, gradA: ga, gradB: gb)
            byModule[s.module] = adapter
            all.append(adapter)
        }
        var layers: [LayerAdapters] = []
        for l in 0..<c.numLayers {
            let p = WeightNames.layerPrefix(l)
            var la = LayerAdapters()
            la.q = byModule[p + "self_attn.q_proj"]
            la.k = byModule[p + "self_attn.k_proj"]
            la.v = byModule[p + "self_attn.v_proj"]
            la.o = byModule[p + "self_attn.o_proj"]
            la.mlp = FeedForwardAdapters(gate: byModule[p + "mlp.gate_proj"], up: byModule[p + "mlp.up_proj"],
                                         down: byModule[p + "mlp.down_proj"])
            la.experts = (0..<c.numExperts).map { e in
                let ep = p + "block_sparse_moe.experts.\(e)."
                return FeedForwardAdapters(gate: byModule[ep + "w1"], up: byModule[ep + "w3"], down: byModule[ep + "w2"])
            }
            la.router = byModule[p + "block_sparse_moe.gate"]
            layers.append(la)
        }
        self.spec = spec
        self.store = store
        self.layers = layers
        self.head = byModule["lm_head"]
        self.all = all
        self.maxRank = all.map(\.rank).max() ?? 0
    }

    public func adapter(module: String) -> LoRAAdapter? { all.first { $0.module == module } }
}

/// A small, fast, seedable generator (SplitMix64) for initialisation, dropout and
/// shuffling: the same seed gives the same run on every machine.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 bits.
    public mutating func nextFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }
}
