import Foundation

/// LoRA adapters in the Hugging Face PEFT format: a folder with adapter_config.json and
/// adapter_model.safetensors, keys "base_model.model." + module + ".lora_A.weight" [r, in]
/// and ".lora_B.weight" [out, r]; module names come from the model's family. Experts use their per-expert checkpoint names,
/// which peft maps onto any expert layout itself — except GPT-OSS, whose checkpoints only
/// ever had fused experts: its experts and router are written as peft's target_parameters
/// (fusedExpertTensors). Reading also accepts the fused expert layout that peft writes for
/// transformers 5 (target_parameters), GPT-OSS's interleaved gate/up included.
public enum PEFTAdapter {
    static let prefix = "base_model.model."

    /// Writes `adapters` to `dir` (created if needed). Files appear atomically.
    public static func save(_ adapters: AdapterSet, family: ModelFamily, baseModel: String, to dir: String) throws {
        let targetSuffix = family.targetSuffix
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var writer = SafeTensorsWriter()
        // GPT-OSS: the experts are written in peft's fused target_parameters layout (see
        // fusedExpertTensors), the router as target_parameters mlp.router.weight.
        let fusedExperts = family.moe?.transposedInterleaved == true
        let isExpert = { (m: String) -> Bool in if case .expert? = family.parse(module: m)?.slot { return true }; return false }
        var fusedPatterns: [String: (rank: Int, alpha: Double)] = [:]
        if fusedExperts {
            fusedPatterns = try fusedExpertTensors(adapters, family: family, rslora: adapters.spec.rslora, into: &writer)
        }
        for a in adapters.all where !(fusedExperts && isExpert(a.module)) {
            writer.add(.init(name: prefix + a.module + ".lora_A.weight", shape: [a.rank, a.inFeatures],
                             floats: UnsafeBufferPointer(start: a.a, count: a.rank * a.inFeatures)))
            writer.add(.init(name: prefix + a.module + ".lora_B.weight", shape: [a.outFeatures, a.rank],
                             floats: UnsafeBufferPointer(start: a.b, count: a.rank * a.outFeatures)))
        }
        // Routers trained in full are saved as PEFT's modules_to_save saves a module: the
        // whole weight under the module's own name.
        let fullRouters = adapters.routers.compactMap { $0 }
        // The router is "block_sparse_moe.gate" in transformers 4 and "mlp.gate" in 5, and
        // peft does not rename modules_to_save: write both names (peft loads non-strictly).
        for r in fullRouters {
            for name in Array(Set([r.module, family.transformers5Module(r.module)])).sorted() {
                writer.add(.init(name: prefix + name + ".weight", shape: [r.experts, r.hidden],
                                 floats: UnsafeBufferPointer(start: r.weight, count: r.experts * r.hidden)))
            }
        }
        let spec = adapters.spec
        let fusedParameter = { (m: String) in fusedExperts && (isExpert(m) || family.kind(of: m) == .router) }
        let suffixes = Array(Set(adapters.all.filter { !fusedParameter($0.module) }.map { targetSuffix($0.module) })).sorted()
        var parameters = Set<String>()
        for a in adapters.all where fusedParameter(a.module) {
            if isExpert(a.module) {
                parameters.formUnion(["experts.gate_up_proj", "experts.down_proj"])
            } else {
                parameters.insert((family.moe?.block ?? "mlp") + "." + (family.moe?.router ?? "router") + ".weight")
            }
        }
        // Suffixes, not a regex over full paths: peft rewrites suffix lists for the fused
        // expert layout of transformers 5, and a layer subset goes in layers_to_transform
        // (which cannot hold lm_head: TrainConfig refuses head with a layer subset).
        var layers: Any = NSNull()
        var layersPattern: Any = NSNull()
        if spec.layers != .all {
            let indices = Set(adapters.all.compactMap { a -> Int? in
                let parts = a.module.split(separator: ".")
                return parts.count > 2 && parts[1] == "layers" ? Int(parts[2]) : nil
            })
            layers = indices.sorted()
            layersPattern = "layers"
        }
        var rankPattern: [String: Int] = [:]
        var alphaPattern: [String: Double] = [:]
        for (key, v) in fusedPatterns {
            rankPattern[key] = v.rank
            alphaPattern[key] = v.alpha
        }
        for (kind, shape) in spec.overrides {
            for a in adapters.all where family.kind(of: a.module) == kind && !(fusedExperts && isExpert(a.module)) {
                // The router is a module in transformers 4 ("gate") and a parameter in 5 ("gate.weight").
                let suffix = targetSuffix(a.module)
                let keys = kind == .router ? [suffix, suffix + ".weight"] : [suffix]
                for key in keys {
                    rankPattern[key] = shape.rank
                    alphaPattern[key] = shape.alpha
                }
            }
        }
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel,
            "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": suffixes.isEmpty && !parameters.isEmpty ? NSNull() : suffixes as Any,
            "target_parameters": parameters.isEmpty ? NSNull() : parameters.sorted() as Any,
            "bias": "none", "fan_in_fan_out": false,
            "use_rslora": spec.rslora, "use_dora": false, "rank_pattern": rankPattern,
            "alpha_pattern": alphaPattern, "modules_to_save": fullRouters.isEmpty ? NSNull() : Array(Set(fullRouters.map { targetSuffix($0.module) })).sorted() as Any, "layers_to_transform": layers,
            "layers_pattern": layersPattern,
            "init_lora_weights": true, "inference_mode": true, "revision": NSNull(),
        ]
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try writer.write(to: dir + "/adapter_model.safetensors")
        try AtomicFile.write(json, to: dir + "/adapter_config.json")
    }

    /// GPT-OSS's experts in peft 0.21's target_parameters layout on transformers 5's fused
    /// experts (gate_up_proj [E, H, 2I], gate/up interleaved; down_proj [E, I, H]); peft
    /// nests the two ParamWrappers, gate_up inside ("experts.base_layer.lora_*"), down
    /// outside ("experts.lora_*"). A [E*r, in] (expert-major), B [out, r*E] (expert fastest).
    /// gate_up holds each expert's gate and up adapters side by side at rank 2r:
    ///   A_e = [A_gate; A_up] [2r, H],  B_e row 2i = [B_gate[i], 0], row 2i+1 = [0, B_up[i]],
    /// so its delta is exactly theirs; alpha becomes s * 2r (s * sqrt(2r) with rslora) to
    /// keep the scale s. Returns the rank/alpha patterns for peft (".*\\.gate_up_proj",
    /// and ".*\\.down_proj" when the experts' rank or alpha is not the config's r / lora_alpha).
    static func fusedExpertTensors(_ adapters: AdapterSet, family: ModelFamily, rslora: Bool,
                                   into writer: inout SafeTensorsWriter) throws -> [String: (rank: Int, alpha: Double)] {
        var byModule: [String: LoRAAdapter] = [:]
        for a in adapters.all { byModule[a.module] = a }
        var patterns: [String: (rank: Int, alpha: Double)] = [:]
        let layers = Set(adapters.all.compactMap { a -> Int? in
            guard let (l, slot) = family.parse(module: a.module), case .expert = slot else { return nil }
            return l
        }).sorted()
        let experts = adapters.layers.first(where: { !$0.experts.isEmpty })?.experts.count ?? 0
        for l in layers {
            let get = { (x: Int, p: FeedForwardPart) throws -> LoRAAdapter in
                guard let a = byModule[family.module(.expert(x, p), layer: l)] else {
                    throw MoETuneError.invalid("\(family.name) layer \(l): an expert adapter needs gate, up and down on every expert (peft's fused layout)")
                }
                return a
            }
            let first = try get(0, .gate), r = first.rank, e = experts
            let (h, inter) = (first.inFeatures, first.outFeatures)
            var guA = [Float](repeating: 0, count: e * 2 * r * h), guB = [Float](repeating: 0, count: 2 * inter * 2 * r * e)
            var dA = [Float](repeating: 0, count: e * r * inter), dB = [Float](repeating: 0, count: h * r * e)
            for x in 0..<e {
                let g = try get(x, .gate), u = try get(x, .up), d = try get(x, .down)
                guard g.rank == r, u.rank == r, d.rank == r, g.scale == first.scale, u.scale == first.scale else {
                    throw MoETuneError.invalid("\(family.name) layer \(l): the experts' adapters differ in rank or scale")
                }
                for i in 0..<(r * h) { guA[(x * 2 * r) * h + i] = g.a[i]; guA[(x * 2 * r + r) * h + i] = u.a[i] }
                for row in 0..<inter {
                    for j in 0..<r {
                        guB[(2 * row) * 2 * r * e + j * e + x] = g.b[row * r + j]
                        guB[(2 * row + 1) * 2 * r * e + (r + j) * e + x] = u.b[row * r + j]
                    }
                }
                for i in 0..<(r * inter) { dA[x * r * inter + i] = d.a[i] }
                for row in 0..<h { for j in 0..<r { dB[row * r * e + j * e + x] = d.b[row * r + j] } }
            }
            let base = prefix + family.layerPrefix(l) + (family.moe?.fusedBlock ?? "mlp") + ".experts."
            for (name, shape, values) in [("base_layer.lora_A", [e * 2 * r, h], guA), ("base_layer.lora_B", [2 * inter, 2 * r * e], guB),
                                          ("lora_A", [e * r, inter], dA), ("lora_B", [h, r * e], dB)] {
                writer.add(.init(name: base + name + ".weight", shape: shape, floats: values))
            }
            // The experts' alpha at rank r: the spec's when it gives this rank and scale
            // (exact), else the one that reproduces the scale.
            let mlp = adapters.spec.shape(of: .mlp)
            let alphaR = mlp.rank == r && adapters.spec.scale(of: .mlp) == first.scale
                ? mlp.alpha : Double(first.scale) * (rslora ? Double(r).squareRoot() : Double(r))
            patterns[".*\\.gate_up_proj"] = (2 * r, rslora ? alphaR * 2.0.squareRoot() : 2 * alphaR)
            if r != adapters.spec.rank || alphaR != adapters.spec.alpha {
                patterns[".*\\.down_proj"] = (r, alphaR)
            }
        }
        return patterns
    }

    /// Reads the adapter in `dir` for `model`. Ranks come from the tensors, scales from
    /// lora_alpha (or alpha_pattern) and use_rslora.
    public static func load(directory dir: String, model: Transformer) throws -> AdapterSet {
        let configPath = dir + "/adapter_config.json"
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw MoETuneError.file(path: configPath, message: FileManager.default.fileExists(atPath: dir)
                ? "not found (is \(dir) a PEFT adapter folder?)" : "adapter folder not found")
        }
        guard let cfg = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw MoETuneError.file(path: configPath, message: "not a JSON object")
        }
        if let type = cfg["peft_type"] as? String, type != "LORA" {
            throw MoETuneError.config(path: configPath, key: "peft_type", message: "only LORA adapters are supported, got \(type)")
        }
        if cfg["use_dora"] as? Bool == true {
            throw MoETuneError.config(path: configPath, key: "use_dora", message: "DoRA adapters are not supported")
        }
        guard let r = (cfg["r"] as? NSNumber)?.intValue, r > 0 else {
            throw MoETuneError.config(path: configPath, key: "r", message: "missing or not a positive integer")
        }
        // No silent fallbacks: a missing or mistyped alpha, or a pattern that cannot be read, is an error.
        guard let alpha = (cfg["lora_alpha"] as? NSNumber)?.doubleValue, !(cfg["lora_alpha"] is Bool), alpha.isFinite else {
            throw MoETuneError.config(path: configPath, key: "lora_alpha", message: "missing or not a number (got \(cfg["lora_alpha"].map { "\($0)" } ?? "nothing"))")
        }
        let rslora = cfg["use_rslora"] as? Bool ?? false
        /// rank_pattern / alpha_pattern: key → (value, regex matching a module path).
        func patterns(_ key: String) throws -> [(key: String, value: Double, regex: NSRegularExpression)] {
            guard let raw = cfg[key], !(raw is NSNull) else { return [] }
            guard let dict = raw as? [String: Any] else { throw MoETuneError.config(path: configPath, key: key, message: "is not an object") }
            return try dict.keys.sorted().map { k in
                guard let v = (dict[k] as? NSNumber)?.doubleValue, !(dict[k] is Bool), v.isFinite else {
                    throw MoETuneError.config(path: configPath, key: key, message: "'\(k)' has \(dict[k].map { "\($0)" } ?? "no value"), not a number")
                }
                guard let re = try? NSRegularExpression(pattern: "^(.*\\.)?(\(k))$") else {
                    throw MoETuneError.config(path: configPath, key: key, message: "'\(k)' is not a valid regular expression")
                }
                return (k, v, re)
            }
        }
        let alphaPattern = try patterns("alpha_pattern"), rankPattern = try patterns("rank_pattern")
        func match(_ table: [(key: String, value: Double, regex: NSRegularExpression)], _ modules: [String]) -> Double? {
            for p in table {
                for module in modules {
                    if module == p.key || module.hasSuffix("." + p.key) { return p.value }
                    if p.regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil { return p.value }
                }
            }
            return nil
        }
        let weightsPath = dir + "/adapter_model.safetensors"
        let family = model.family
        let file = try SafeTensorsFile(path: weightsPath)

        func alphaFor(_ module: String) -> Double {
            match(alphaPattern, [module]) ?? alpha
        }
        /// `patternName`: the name peft matches the patterns against where it differs from
        /// the module (a fused expert parameter, "...mlp.experts.gate_up_proj": peft 0.21 gives
        /// gate_up twice the rank and alpha through rank_pattern / alpha_pattern).
        func scale(_ module: String, rank: Int, patternName: String? = nil) -> Float {
            let a = patternName.flatMap { match(alphaPattern, [$0]) } ?? alphaFor(module)
            return Float(rslora ? a / Double(rank).squareRoot() : a / Double(rank))
        }
        func floats(_ name: String) throws -> [Float] {
            let info = file.tensors[name]!
            var out = [Float](repeating: 0, count: info.count)
            let ok = out.withUnsafeMutableBufferPointer {
                FloatConversion.toFloat(file.bytes(of: info).baseAddress!, dtype: info.dtype, count: info.count, into: $0.baseAddress!)
            }
            guard ok else { throw MoETuneError.file(path: weightsPath, message: "tensor '\(name)' has dtype \(info.dtype.rawValue); expected a float type") }
            return out
        }

        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_B.weight") {
            let a = String(name.dropLast(".lora_B.weight".count)) + ".lora_A.weight"
            guard file.tensors[a] != nil else {
                throw MoETuneError.file(path: weightsPath, message: "tensor '\(name)' has no lora_A beside it")
            }
        }
        // Collect (module → A, B) in moe-tune's per-module naming.
        var pieces: [(module: String, a: [Float], b: [Float], rank: Int, patternName: String?)] = []
        var seen = Set<String>()
        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_A.weight") {
            guard name.hasPrefix(prefix) else {
                throw MoETuneError.file(path: weightsPath, message: "tensor '\(name)' does not start with \(prefix)")
            }
            let module = String(name.dropFirst(prefix.count).dropLast(".lora_A.weight".count))
            let bName = prefix + module + ".lora_B.weight"
            guard let aInfo = file.tensors[name], let bInfo = file.tensors[bName], aInfo.shape.count == 2, bInfo.shape.count == 2 else {
                throw MoETuneError.file(path: weightsPath, message: "module \(module): lora_A/lora_B missing or not 2-D")
            }
            if let fused = family.fusedExpertAdapter(module) {
                // A: (E, r, in) as [E*r, in];  B: (out, r, E) as [out, r*E], expert fastest.
                let e = model.config.numExperts
                guard e > 0, aInfo.shape[0] % e == 0 else {
                    throw MoETuneError.file(path: weightsPath, message: "module \(module): fused expert adapter does not match \(e) experts")
                }
                let rank = aInfo.shape[0] / e, inF = aInfo.shape[1], outF = bInfo.shape[0]
                guard bInfo.shape[1] == rank * e else {
                    throw MoETuneError.file(path: weightsPath, message: "module \(module): lora_B shape \(bInfo.shape) does not match lora_A \(aInfo.shape)")
                }
                let a = try floats(name), b = try floats(bName)
                let inter = model.config.expertIntermediateSize
                for x in 0..<e {
                    let ax = Array(a[(x * rank * inF)..<((x + 1) * rank * inF)])
                    var bx = [Float](repeating: 0, count: outF * rank)
                    for o in 0..<outF { for j in 0..<rank { bx[o * rank + j] = b[o * rank * e + j * e + x] } }
                    let name = { (part: FeedForwardPart) in family.module(.expert(x, part), layer: fused.layer) }
                    if fused.gateUp {
                        guard outF == 2 * inter else {
                            throw MoETuneError.file(path: weightsPath, message: "module \(module): gate_up lora_B has \(outF) rows, expected \(2 * inter)")
                        }
                        let param = family.fusedGateUp(fused.layer)
                        // gate rows then up rows; GPT-OSS interleaves them (row 2i gate, 2i+1 up).
                        let interleaved = family.moe?.transposedInterleaved == true
                        let rowsOf = { (up: Int) in (0..<inter).map { interleaved ? 2 * $0 + up : up * inter + $0 } }
                        let pick = { (rows: [Int]) in rows.flatMap { bx[($0 * rank)..<(($0 + 1) * rank)] } }
                        pieces.append((name(.gate), ax, pick(rowsOf(0)), rank, param))
                        pieces.append((name(.up), ax, pick(rowsOf(1)), rank, param))
                    } else {
                        pieces.append((name(.down), ax, bx, rank, family.fusedDown(fused.layer)))
                    }
                }
                continue
            }
            let canonical = family.canonicalModule(module)
            guard !seen.contains(canonical) else {
                throw MoETuneError.file(path: weightsPath, message: "module \(canonical) appears twice")
            }
            seen.insert(canonical)
            guard aInfo.shape[0] == bInfo.shape[1] else {
                throw MoETuneError.file(path: weightsPath, message: "module \(module): lora_A \(aInfo.shape) and lora_B \(bInfo.shape) disagree on the rank")
            }
            let expectedRank = match(rankPattern, [module, canonical]).map { Int($0) } ?? r
            guard aInfo.shape[0] == expectedRank else {
                throw MoETuneError.config(path: configPath, key: "r",
                    message: "module \(module) has rank \(aInfo.shape[0]) in \(weightsPath) but the config gives \(expectedRank) (r or rank_pattern)")
            }
            pieces.append((canonical, try floats(name), try floats(bName), aInfo.shape[0], nil))
        }
        // Full router weights (modules_to_save), in either layout's naming.
        var routerWeights: [Int: [Float]] = [:]
        let savesModules = (cfg["modules_to_save"] as? [String]) ?? []
        let routerName = family.moe?.router ?? "gate"
        if model.config.isMoE, savesModules.contains(where: { $0 == routerName || $0.hasSuffix("." + routerName) }) {
            for name in file.tensors.keys where name.hasSuffix("." + routerName + ".weight") && !name.contains("lora_") {
                let module = family.canonicalModule(String(name.dropFirst(prefix.count).dropLast(".weight".count)))
                guard let (l, slot) = family.parse(module: module), slot == .router, l < model.config.numLayers,
                      file.tensors[name]!.shape == [model.config.numExperts, model.config.hiddenSize] else {
                    throw MoETuneError.file(path: weightsPath, message: "tensor '\(name)' is not a router weight of this model")
                }
                routerWeights[l] = try floats(name)
            }
        }
        guard !pieces.isEmpty || !routerWeights.isEmpty else {
            throw MoETuneError.file(path: weightsPath, message: "no LoRA tensors (*.lora_A.weight) found")
        }
        // As peft does: target_modules (a list of suffixes) must name at least one module the tensors hold.
        if let targets = cfg["target_modules"] as? [String], !targets.isEmpty,
           (cfg["target_parameters"] as? [Any] ?? []).isEmpty {
            let modules = file.tensors.keys.filter { $0.hasSuffix(".lora_A.weight") }.map { String($0.dropLast(".lora_A.weight".count)) }
            guard targets.contains(where: { t in modules.contains { $0 == t || $0.hasSuffix("." + t) } }) else {
                throw MoETuneError.config(path: configPath, key: "target_modules", message: "\(targets) match none of the adapter's modules")
            }
        }
        var plan: [AdapterPlan] = []
        for p in pieces {
            guard let w = model.linear(module: p.module) else {
                throw MoETuneError.file(path: weightsPath, message: "module \(p.module) does not exist in the base model")
            }
            guard p.a.count == p.rank * w.cols, p.b.count == w.rows * p.rank else {
                throw MoETuneError.file(path: weightsPath,
                    message: "module \(p.module): adapter shapes A [\(p.rank), \(p.a.count / max(p.rank, 1))], B [\(p.b.count / max(p.rank, 1)), \(p.rank)] do not fit the base weight [\(w.rows), \(w.cols)]")
            }
            plan.append(AdapterPlan(module: p.module, rank: p.rank, scale: scale(p.module, rank: p.rank, patternName: p.patternName)))
        }
        let kinds = Set(plan.compactMap { family.kind(of: $0.module) })
        var spec = LoRASpec(rank: r, alpha: alpha, dropout: 0, rslora: rslora, targets: kinds, layers: .all)
        spec.trainRouters = !routerWeights.isEmpty
        let set = try AdapterSet(model: model, plan: plan, spec: spec, seed: 0, fullRouters: routerWeights.keys.sorted())
        for (adapter, p) in zip(set.all, pieces) {
            adapter.a.update(from: p.a, count: p.a.count)
            adapter.b.update(from: p.b, count: p.b.count)
        }
        for (l, w) in routerWeights { set.routers[l]!.weight.update(from: w, count: w.count) }
        return set
    }
}
