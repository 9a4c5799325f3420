import Foundation
import MoEFormats
import MoEText

/// The steps of PEFTAdapter.save: the tensors of adapter_model.safetensors, the fused expert
/// blocks among them, and the fields of adapter_config.json.
extension PEFTAdapter {
    /// One LoRA pair as peft stores it: A [rank, in], B [out, rank], row-major.
    package struct LoRAPair: Equatable {
        package var a: [Float]
        package var b: [Float]
        package var rank: Int
        package var inFeatures: Int
        package var outFeatures: Int
    }

    /// A LoRA's (rank, alpha) in a target_parameters entry, where it differs from (r, lora_alpha).
    package typealias PatternShape = (rank: Int, alpha: Double)

    /// What save writes into adapter_model.safetensors, and what adapter_config.json says of it.
    package struct SavedLayout {
        /// The tensors, in the order they were added (the file sorts them by name).
        package var tensors: [SafeTensorsWriter.Entry] = []
        /// Adapters peft wraps as modules (`target_modules`).
        package var moduleAdapters: [LoRAAdapter] = []
        /// `target_parameters` entries (layer-relative with every layer, else full names) with
        /// (rank, alpha) when they differ from r / lora_alpha.
        package var parameters: [(name: String, shape: PatternShape?)] = []
        /// Routers trained in full (`modules_to_save`).
        package var fullRouters: [TrainedRouter] = []

        /// Adds `module`'s lora_A [rank, in] and lora_B [out, rank].
        mutating func add(_ module: String, _ p: LoRAPair) {
            tensors.append(.init(name: prefix + module + ".lora_A.weight", shape: [p.rank, p.inFeatures], floats: p.a))
            tensors.append(.init(name: prefix + module + ".lora_B.weight", shape: [p.outFeatures, p.rank], floats: p.b))
        }
    }

    /// The layout of `adapters` in peft's files: 2-D parameter adapters (routers, shared
    /// experts, dense MLPs in a `peftFusedLayout` family) under their transformers 5 module,
    /// each layer's experts as two fused blocks, full routers under both layouts' names, and
    /// the module adapters (attention, head, anything in a per-module family) as they are.
    package static func savedLayout(_ adapters: AdapterSet, family: ModelFamily) throws -> SavedLayout {
        let spec = adapters.spec
        var layout = SavedLayout()
        var expertLayers = Set<Int>()
        for a in adapters.all {
            guard let (l, slot) = family.parse(module: a.module), family.isPEFTParameterSlot(slot) else {
                layout.moduleAdapters.append(a)
                continue
            }
            if case .expert = slot { expertLayers.insert(l); continue }
            // A 2-D ParamWrapper keeps lora_A [r, in] / lora_B [out, r] under the module holding the weight.
            let module = family.transformers5Module(a.module)
            layout.add(module, pair(a))
            layout.parameters.append((parameterName(module + ".weight", layer: l, spec: spec, family: family),
                                      patternShape(a, spec: spec, family: family)))
        }
        for l in expertLayers.sorted() {
            let fused = try fusedExpertLoRA(adapters.layers[l].experts, layer: l, family: family)
            let modules = family.fusedExpertAdapterModules(l)
            layout.add(modules.gateUp, fused.gateUp)
            layout.add(modules.down, fused.down)
            // Twice the rank; alpha so that alpha'/r' (rsLoRA: alpha'/sqrt(r')) is each expert's scale.
            let alphaGate = savedAlpha(of: fused.gate, spec: spec, family: family)
            layout.parameters.append((parameterName(family.fusedGateUp(l), layer: l, spec: spec, family: family),
                                      (2 * fused.gate.rank, spec.rslora ? alphaGate * 2.0.squareRoot() : 2 * alphaGate)))
            layout.parameters.append((parameterName(family.fusedDown(l), layer: l, spec: spec, family: family),
                                      patternShape(fused.downAdapter, spec: spec, family: family)))
        }
        // Routers trained in full are saved as PEFT's modules_to_save saves a module: the
        // whole weight under the module's own name.
        layout.fullRouters = adapters.routers.compactMap { $0 }
        // The router is "block_sparse_moe.gate" in transformers 4 and "mlp.gate" in 5, and
        // peft does not rename modules_to_save: write both names (peft loads non-strictly).
        for r in layout.fullRouters {
            for name in Array(Set([r.module, family.transformers5Module(r.module)])).sorted() {
                layout.tensors.append(.init(name: prefix + name + ".weight", shape: [r.experts, r.hidden],
                                            floats: UnsafeBufferPointer(start: r.weight, count: r.experts * r.hidden)))
                // A router with a bias (GPT-OSS): peft's modules_to_save copy holds it too (frozen).
                if let bias = r.bias {
                    layout.tensors.append(.init(name: prefix + name + ".bias", shape: [r.experts],
                                                floats: UnsafeBufferPointer(start: bias, count: r.experts)))
                }
            }
        }
        for a in layout.moduleAdapters { layout.add(a.module, pair(a)) }
        return layout
    }

    /// An adapter's A and B values.
    static func pair(_ a: LoRAAdapter) -> LoRAPair {
        LoRAPair(a: Array(UnsafeBufferPointer(start: a.a, count: a.rank * a.inFeatures)),
                 b: Array(UnsafeBufferPointer(start: a.b, count: a.rank * a.outFeatures)),
                 rank: a.rank, inFeatures: a.inFeatures, outFeatures: a.outFeatures)
    }

    /// A target_parameters entry: layer-relative with every layer adapted, else the full name.
    static func parameterName(_ full: String, layer l: Int, spec: LoRASpec, family: ModelFamily) -> String {
        spec.layers == .all ? String(full.dropFirst(family.layerPrefix(l).count)) : full
    }

    /// An adapter's alpha: its kind's in the spec where that gives its scale (exact alphas
    /// as configured), else from its scale (an adapter read from a file with its own ranks).
    static func savedAlpha(of a: LoRAAdapter, spec: LoRASpec, family: ModelFamily) -> Double {
        func rsFactor(_ rank: Int) -> Double { spec.rslora ? Double(rank).squareRoot() : Double(rank) }
        guard let kind = family.kind(of: a.module) else { return Double(a.scale) * rsFactor(a.rank) }
        let s = spec.shape(of: kind)
        return s.rank == a.rank && Float(s.alpha / rsFactor(s.rank)) == a.scale ? s.alpha : Double(a.scale) * rsFactor(a.rank)
    }

    /// An adapter's (rank, alpha) where it differs from (r, lora_alpha); nil where it does not.
    static func patternShape(_ a: LoRAAdapter, spec: LoRASpec, family: ModelFamily) -> PatternShape? {
        let al = savedAlpha(of: a, spec: spec, family: family)
        return a.rank == spec.rank && al == spec.alpha ? nil : (a.rank, al)
    }

    /// Layer l's experts as peft's ParamWrapper on the 3-D expert tensors: gate and up as one
    /// block-diagonal LoRA of twice the rank on gate_up_proj, down on down_proj, experts
    /// fastest in B. Experts without adapters (ESFT: not selected) are zero blocks of A and B:
    /// no delta in peft, and skipped again when read back. `gate`, `downAdapter`: the first
    /// adapted expert's (their ranks and scales are every expert's).
    package static func fusedExpertLoRA(_ experts: [FeedForwardAdapters], layer l: Int, family: ModelFamily) throws
        -> (gateUp: LoRAPair, down: LoRAPair, gate: LoRAAdapter, downAdapter: LoRAAdapter) {
        let e = experts.count
        let adapted = experts.filter { !$0.isEmpty }
        guard e > 0, let g0 = adapted.first?.gate, let d0 = adapted.first?.down,
              adapted.allSatisfy({ $0.gate?.rank == g0.rank && $0.up?.rank == g0.rank && $0.down?.rank == d0.rank }) else {
            throw MoETuneError.invalid("layer \(l): peft's fused expert layout needs LoRA adapters on each adapted expert's gate, up and down projections, each kind with one rank")
        }
        // gate_up_proj [E, 2I, H]: each expert's A [2r, H] is [A_gate; A_up] and its B [2I, 2r]
        // block-diagonal: gate rows read columns 0..<r, up rows r..<2r (peft's PeftConcatenate
        // of w1/w3), the rows where the family's transformers 5 layout puts gate and up
        // (GPT-OSS's gate_up [E, H, 2I] interleaves them: gate row o is B row 2o, up row o 2o+1).
        let r = g0.rank, h = g0.inFeatures, inter = g0.outFeatures, r2 = 2 * r
        let layout = ExpertLayout.transformers5(family)
        let gateUp = ExpertLayout.FusedLoRA(experts: e, rank: r2, inFeatures: h, outFeatures: 2 * inter)
        var a = [Float](repeating: 0, count: e * r2 * h)
        var b = [Float](repeating: 0, count: 2 * inter * r2 * e)
        for (x, ex) in experts.enumerated() where !ex.isEmpty {
            var ax = [Float](repeating: 0, count: r2 * h), bx = [Float](repeating: 0, count: 2 * inter * r2)
            for (half, (part, ad)) in [(FeedForwardPart.gate, ex.gate!), (.up, ex.up!)].enumerated() {
                for j in 0..<r {
                    for i in 0..<h { ax[(half * r + j) * h + i] = ad.a[j * h + i] }
                    for o in 0..<inter { bx[layout.gateUpRow(part, o, inter: inter) * r2 + half * r + j] = ad.b[o * r + j] }
                }
            }
            gateUp.set(x, a: ax, b: bx, into: &a, &b)
        }
        // down_proj [E, H, I]: A (E, r, I) as [E*r, I]; B (H, r, E) as [H, r*E].
        let rd = d0.rank, di = d0.inFeatures, dout = d0.outFeatures
        let down = ExpertLayout.FusedLoRA(experts: e, rank: rd, inFeatures: di, outFeatures: dout)
        var da = [Float](repeating: 0, count: e * rd * di)
        var db = [Float](repeating: 0, count: dout * rd * e)
        for (x, ex) in experts.enumerated() where !ex.isEmpty { down.set(x, a: ex.down!.a, b: ex.down!.b, into: &da, &db) }
        return (LoRAPair(a: a, b: b, rank: e * r2, inFeatures: h, outFeatures: 2 * inter),
                LoRAPair(a: da, b: db, rank: e * rd, inFeatures: di, outFeatures: dout), g0, d0)
    }

    /// adapter_config.json's fields for `layout` (of `adapters`).
    package static func savedConfig(_ adapters: AdapterSet, layout: SavedLayout, family: ModelFamily, baseModel: String) -> [String: Any] {
        let spec = adapters.spec
        let suffixes = Array(Set(layout.moduleAdapters.map { family.targetSuffix($0.module) })).sorted()
        let (layers, layersPattern) = layersToTransform(layout.moduleAdapters, spec: spec)
        let (rankPattern, alphaPattern) = savedPatterns(layout, spec: spec, family: family)
        let targetParameters = Array(Set(layout.parameters.map(\.name))).sorted()
        // peft wraps every module whose name ends with a modules_to_save entry (a plain string
        // suffix: "gate" would also take Qwen2-MoE's shared_expert_gate), so name the router
        // with its block, in both layouts' names.
        let savedModules = Array(Set(layout.fullRouters.flatMap { r in
            [r.module, family.transformers5Module(r.module)].map { $0.split(separator: ".").suffix(2).joined(separator: ".") }
        })).sorted()
        var config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel,
            "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": suffixes, "bias": "none", "fan_in_fan_out": false,
            "use_rslora": spec.rslora, "use_dora": false, "rank_pattern": rankPattern,
            "alpha_pattern": alphaPattern, "modules_to_save": layout.fullRouters.isEmpty ? NSNull() : savedModules as Any,
            "layers_to_transform": layers, "layers_pattern": layersPattern,
            "init_lora_weights": true, "inference_mode": true, "revision": NSNull(),
        ]
        if !targetParameters.isEmpty { config["target_parameters"] = targetParameters }
        return config
    }

    /// layers_to_transform and layers_pattern: null, or with a layer subset the layers the
    /// module adapters are on and "layers". target_modules are suffixes, not a regex over full
    /// paths (peft resolves a regex to leaf names and remaps some of them for transformers 5);
    /// lm_head cannot be in a subset (TrainConfig refuses head with a layer subset).
    static func layersToTransform(_ moduleAdapters: [LoRAAdapter], spec: LoRASpec) -> (layers: Any, pattern: Any) {
        guard spec.layers != .all, !moduleAdapters.isEmpty else { return (NSNull(), NSNull()) }
        let indices = Set(moduleAdapters.compactMap { a -> Int? in
            let parts = a.module.split(separator: ".")
            return parts.count > 2 && parts[1] == "layers" ? Int(parts[2]) : nil
        })
        return (indices.sorted(), "layers")
    }

    /// rank_pattern and alpha_pattern: every module adapter and target parameter whose
    /// (rank, alpha) is not (r, lora_alpha).
    static func savedPatterns(_ layout: SavedLayout, spec: LoRASpec, family: ModelFamily) -> (rank: [String: Int], alpha: [String: Double]) {
        var rankPattern: [String: Int] = [:]
        var alphaPattern: [String: Double] = [:]
        for a in layout.moduleAdapters {
            guard let shape = patternShape(a, spec: spec, family: family) else { continue }
            // The router is a module in transformers 4 ("gate") and a parameter in 5 ("gate.weight").
            let suffix = family.targetSuffix(a.module)
            for key in family.kind(of: a.module) == .router ? [suffix, suffix + ".weight"] : [suffix] {
                rankPattern[key] = shape.rank
                alphaPattern[key] = shape.alpha
            }
        }
        // peft matches pattern keys as regular expressions against the parameter's full name.
        for p in layout.parameters {
            guard let shape = p.shape else { continue }
            let key = NSRegularExpression.escapedPattern(for: p.name)
            rankPattern[key] = shape.rank
            alphaPattern[key] = shape.alpha
        }
        return (rankPattern, alphaPattern)
    }
}
