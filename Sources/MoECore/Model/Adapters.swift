import Foundation
import MoEFormats
import MoEText

/// Which linear layers carry LoRA adapters. Names are the config's module kinds.
public enum ModuleKind: String, CaseIterable, Sendable, Codable {
    case query, key, value, projection, mlp, router, head
    /// The shared expert of Qwen2-MoE (its gate/up/down projections).
    case sharedExpert = "shared_expert"
}

/// Which decoder layers get adapters.
public enum LayerSelection: Equatable, Sendable {
    case all
    case last(Int)
    case list([Int])

    package func contains(_ l: Int, of total: Int) -> Bool {
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
    /// Train each router's weight in full (moe.router: full) instead of freezing it.
    public var trainRouters = false
    /// ESFT: per MoE layer, the experts whose projections get LoRA (`mlp`); a routed layer
    /// missing from the map gets none. nil: every expert (see ExpertSubsets.swift).
    public var expertSubsets: [Int: [Int]]? = nil

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

    package init(count: Int) {
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
    /// The shared expert's projections (Qwen2-MoE).
    public var shared = FeedForwardAdapters()

    package init(q: LoRAAdapter? = nil, k: LoRAAdapter? = nil, v: LoRAAdapter? = nil, o: LoRAAdapter? = nil, mlp: FeedForwardAdapters = FeedForwardAdapters(), experts: [FeedForwardAdapters] = [], router: LoRAAdapter? = nil, shared: FeedForwardAdapters = FeedForwardAdapters()) {
        self.q = q
        self.k = k
        self.v = v
        self.o = o
        self.mlp = mlp
        self.experts = experts
        self.router = router
        self.shared = shared
    }
}

/// A router weight [E, H] trained in full, a slice of the ParameterStore (saved like
/// PEFT's modules_to_save).
public struct TrainedRouter: @unchecked Sendable {
    public let module: String          // the family's router module, e.g. "model.layers.N.block_sparse_moe.gate"
    public let experts: Int
    public let hidden: Int
    public let weight: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>
    /// The base router's frozen bias [E] (GPT-OSS), saved beside the weight as peft saves the module.
    public var bias: UnsafePointer<Float>? = nil
}

/// One adapter to lay out: a module path (PEFT naming), its rank and its scale.
public struct AdapterPlan: Equatable, Sendable {
    public var module: String
    public var rank: Int
    public var scale: Float
    public init(module: String, rank: Int, scale: Float) { self.module = module; self.rank = rank; self.scale = scale }
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
    /// Dropout on adapter inputs (nil when the spec's dropout is 0).
    public let dropout: LoRADropout?
    /// Routers trained in full (fp32), per layer; nil where the router is frozen or has LoRA.
    public let routers: [TrainedRouter?]
    /// Learned noise-scale weights W_noise [E, H] of noisy top-k, per layer (training only;
    /// not part of the saved adapter, since noise is off at inference).
    public let noiseWeights: [TrainedRouter?]

    /// The router weight layer l uses in place of the checkpoint's, if trained in full.
    @inline(__always)
    package func noiseWeight(layer l: Int) -> Matrix? {
        guard l < noiseWeights.count, let r = noiseWeights[l] else { return nil }
        return Matrix(r.weight, rows: r.experts, cols: r.hidden)
    }

    @inline(__always)
    package func trainedRouter(layer l: Int) -> Matrix? {
        guard l < routers.count, let r = routers[l] else { return nil }
        return Matrix(r.weight, rows: r.experts, cols: r.hidden)
    }

    /// Lays out adapters for `spec` on `model`. A is initialised kaiming-uniform
    /// (bound 1/sqrt(in), as PEFT does), B with zeros; `seed` makes it reproducible.
    public convenience init(model: Transformer, spec: LoRASpec, seed: UInt64) throws {
        let c = model.config
        if spec.targets.contains(.router), !c.isMoE {
            throw MoETuneError.invalid("lora targets 'router' but \(c.family.name) models have no router")
        }
        if spec.targets.contains(.mlp), c.isMoE == false, model.layers.first?.mlp == nil {
            throw MoETuneError.invalid("lora targets 'mlp' but the model has no MLP")
        }
        if case .list(let ls) = spec.layers, let bad = ls.first(where: { $0 < 0 || $0 >= c.numLayers }) {
            throw MoETuneError.invalid("lora layer \(bad) does not exist (the model has layers 0..\(c.numLayers - 1))")
        }
        if case .last(let n) = spec.layers, n < 1 || n > c.numLayers {
            throw MoETuneError.invalid("lora layers: \(n) must be between 1 and the model's \(c.numLayers) layers")
        }
        var plan: [AdapterPlan] = []
        for l in 0..<c.numLayers where spec.layers.contains(l, of: c.numLayers) {
            for kind in ModuleKind.allCases where kind != .head && spec.targets.contains(kind) {
                for module in model.modules(of: kind, layer: l) where spec.adapts(module: module, family: c.family) {
                    plan.append(AdapterPlan(module: module, rank: spec.shape(of: kind).rank, scale: spec.scale(of: kind)))
                }
            }
        }
        if spec.targets.contains(.head) {
            plan.append(AdapterPlan(module: c.family.module(.head, layer: 0), rank: spec.shape(of: .head).rank, scale: spec.scale(of: .head)))
        }
        let routerLayers = spec.trainRouters
            ? (0..<c.numLayers).filter { spec.layers.contains($0, of: c.numLayers) && model.layers[$0].router != nil } : []
        let noiseLayers = model.moe.learnedNoise && model.moe.noiseStd > 0
            ? (0..<c.numLayers).filter { model.layers[$0].router != nil } : []
        try self.init(model: model, plan: plan, spec: spec, seed: seed, fullRouters: routerLayers, noiseLayers: noiseLayers)
    }

    /// Lays out the adapters of `plan` (module paths with rank and scale).
    /// `fullRouters`: layers whose router weight is trained in full, starting from the
    /// checkpoint's values.
    /// `stackedRanks`: ranks are sums of several adapters' (a mix), so they may exceed the layer's.
    public convenience init(model: Transformer, plan: [AdapterPlan], spec: LoRASpec, seed: UInt64, fullRouters: [Int] = [],
                            noiseLayers: [Int] = [], stackedRanks: Bool = false) throws {
        try self.init(shapes: ModuleShapes(model: model), plan: plan, spec: spec, seed: seed, fullRouters: fullRouters,
                      noiseLayers: noiseLayers, stackedRanks: stackedRanks)
    }

    /// The same from the module shapes alone (no weights loaded: a router trained in full
    /// then starts from zeros, for a caller that fills in its trained values).
    public init(shapes model: ModuleShapes, plan: [AdapterPlan], spec: LoRASpec, seed: UInt64, fullRouters: [Int] = [],
                noiseLayers: [Int] = [], stackedRanks: Bool = false) throws {
        let c = model.config
        var shapes: [(plan: AdapterPlan, weight: (rows: Int, cols: Int))] = []
        for p in plan {
            guard let w = model.linear(p.module) else {
                throw MoETuneError.invalid("the model has no linear layer \(p.module)")
            }
            guard p.rank >= 1, stackedRanks || p.rank <= min(w.rows, w.cols) else {
                throw MoETuneError.invalid("lora rank \(p.rank) for \(p.module) must be between 1 and \(min(w.rows, w.cols)) (the layer is [\(w.rows), \(w.cols)])")
            }
            shapes.append((p, w))
        }
        let routerSize = c.numExperts * c.hiddenSize
        let total = shapes.reduce(0) { $0 + $1.plan.rank * ($1.weight.rows + $1.weight.cols) } + (fullRouters.count + noiseLayers.count) * routerSize
        guard spec.dropout >= 0, spec.dropout < 1 else {
            throw MoETuneError.invalid("lora dropout must be in [0, 1), got \(spec.dropout)")
        }
        // Scratch for dropped inputs is sized by the trainer (LoRADropout.reserve).
        let dropout = spec.dropout > 0 ? LoRADropout(p: Float(spec.dropout), seed: seed ^ 0xD0, scratchCount: 0) : nil
        let store = ParameterStore(count: total)
        var rng = SplitMix64(seed: seed)
        var offset = 0
        var byModule: [String: LoRAAdapter] = [:]
        var all: [LoRAAdapter] = []
        for (p, w) in shapes {
            let r = p.rank
            let a = store.params.pointer + offset, ga = store.grads.pointer + offset
            offset += r * w.cols
            let b = store.params.pointer + offset, gb = store.grads.pointer + offset
            offset += r * w.rows
            let bound = 1 / Float(w.cols).squareRoot()
            for i in 0..<(r * w.cols) { a[i] = (rng.nextFloat() * 2 - 1) * bound }
            let adapter = LoRAAdapter(module: p.module, rank: r, inFeatures: w.cols, outFeatures: w.rows,
                                      scale: p.scale, a: a, b: b, gradA: ga, gradB: gb,
                                      index: all.count, dropout: dropout)
            byModule[p.module] = adapter
            all.append(adapter)
        }
        var routers = [TrainedRouter?](repeating: nil, count: c.numLayers)
        let hasRouter = { (l: Int) in model.linear(c.family.module(.router, layer: l)) != nil }
        for l in fullRouters {
            guard hasRouter(l) else { continue }
            let w = store.params.pointer + offset, g = store.grads.pointer + offset
            offset += routerSize
            let base = model.routerBase(l)
            if let b = base.weight { w.update(from: b, count: routerSize) } else { w.update(repeating: 0, count: routerSize) }
            routers[l] = TrainedRouter(module: c.family.module(.router, layer: l),
                                       experts: c.numExperts, hidden: c.hiddenSize, weight: w, grad: g,
                                       bias: base.bias)
        }
        var noiseWeights = [TrainedRouter?](repeating: nil, count: c.numLayers)
        for l in noiseLayers where hasRouter(l) {
            let w = store.params.pointer + offset, g = store.grads.pointer + offset
            offset += routerSize
            noiseWeights[l] = TrainedRouter(module: c.family.module(.router, layer: l) + "_noise",
                                            experts: c.numExperts, hidden: c.hiddenSize, weight: w, grad: g)
        }
        let layers = Self.layerAdapters(byModule, config: c)
        self.spec = spec
        self.store = store
        self.layers = layers
        self.head = byModule[c.family.module(.head, layer: 0)]
        self.all = all
        self.maxRank = all.map(\.rank).max() ?? 0
        self.dropout = dropout
        self.routers = routers
        self.noiseWeights = noiseWeights
    }

    /// Each layer's adapters found by module name (nil where the plan has none).
    static func layerAdapters(_ byModule: [String: LoRAAdapter], config c: ModelConfig) -> [LayerAdapters] {
        var layers: [LayerAdapters] = []
        for l in 0..<c.numLayers {
            let f = c.family
            func at(_ slot: LinearSlot) -> LoRAAdapter? { byModule[f.module(slot, layer: l)] }
            var la = LayerAdapters()
            la.q = at(.q)
            la.k = at(.k)
            la.v = at(.v)
            la.o = at(.o)
            la.mlp = FeedForwardAdapters(gate: at(.mlp(.gate)), up: at(.mlp(.up)), down: at(.mlp(.down)))
            la.experts = (0..<c.numExperts).map { e in
                FeedForwardAdapters(gate: at(.expert(e, .gate)), up: at(.expert(e, .up)), down: at(.expert(e, .down)))
            }
            la.router = at(.router)
            la.shared = FeedForwardAdapters(gate: at(.shared(.gate)), up: at(.shared(.up)), down: at(.shared(.down)))
            layers.append(la)
        }
        return layers
    }
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
