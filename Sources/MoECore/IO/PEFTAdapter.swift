import Foundation
import MoEFormats
import MoEText

/// LoRA adapters in the Hugging Face PEFT format: a folder with adapter_config.json and
/// adapter_model.safetensors, keys "base_model.model." + module + ".lora_A.weight" [r, in]
/// and ".lora_B.weight" [out, r]; module names come from the model's family. MoE families
/// write transformers 5's fused layout (`target_parameters`, see `save`); reading takes that,
/// peft's own fused adapters and the per-expert names moe-tune wrote before.
public enum PEFTAdapter {
    package static let prefix = "base_model.model."

    /// A JSON true/false (not `is Bool`: on Linux an NSNumber 1 or 0 also casts to Bool).
    package static func isJSONBool(_ v: Any?) -> Bool { (v as? NSNumber).map(CFGetTypeIDIsBool) ?? false }

    /// Writes `adapters` to `dir` (created if needed). Files appear atomically.
    /// Attention and head adapters go in `target_modules` (suffixes). In a family whose
    /// block says `peftFusedLayout` (transformers 5's fused experts), the rest are
    /// `target_parameters`: each layer's experts as peft's ParamWrapper on the 3-D
    /// `experts.gate_up_proj` / `experts.down_proj` (gate and up as one block-diagonal LoRA
    /// of twice the rank, `rank_pattern`/`alpha_pattern` keeping every expert's scale), and
    /// the router, shared-expert and dense-MLP adapters on their 2-D weights (peft 0.21 wraps
    /// neither a router that is not a Linear nor, there, a `gate_proj` target that is not an expert).
    public static func save(_ adapters: AdapterSet, family: ModelFamily, baseModel: String, to dir: String) throws {
        let targetSuffix = family.targetSuffix
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var writer = SafeTensorsWriter()
        let spec = adapters.spec
        func add(_ module: String, a: [Float], b: [Float], rank: Int, inF: Int, outF: Int) {
            writer.add(.init(name: prefix + module + ".lora_A.weight", shape: [rank, inF], floats: a))
            writer.add(.init(name: prefix + module + ".lora_B.weight", shape: [outF, rank], floats: b))
        }
        func values(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
        var moduleAdapters: [LoRAAdapter] = []
        /// target_parameters entries (layer-relative with every layer, else full names) with
        /// (rank, alpha) when they differ from r / lora_alpha.
        var parameters: [(name: String, shape: (rank: Int, alpha: Double)?)] = []
        let layerPrefixLength = { (l: Int) in family.layerPrefix(l).count }
        func parameterName(_ full: String, layer l: Int) -> String {
            spec.layers == .all ? String(full.dropFirst(layerPrefixLength(l))) : full
        }
        /// An adapter's (rank, alpha) where it differs from (r, lora_alpha): its kind's in the
        /// spec where that gives its scale (exact alphas as configured), else from its scale
        /// (an adapter read from a file with its own ranks).
        func rsFactor(_ rank: Int) -> Double { spec.rslora ? Double(rank).squareRoot() : Double(rank) }
        func alpha(of a: LoRAAdapter) -> Double {
            guard let kind = family.kind(of: a.module) else { return Double(a.scale) * rsFactor(a.rank) }
            let s = spec.shape(of: kind)
            return s.rank == a.rank && Float(s.alpha / rsFactor(s.rank)) == a.scale ? s.alpha : Double(a.scale) * rsFactor(a.rank)
        }
        func patternShape(_ a: LoRAAdapter) -> (rank: Int, alpha: Double)? {
            let al = alpha(of: a)
            return a.rank == spec.rank && al == spec.alpha ? nil : (a.rank, al)
        }
        var expertLayers = Set<Int>()
        for a in adapters.all {
            guard let (l, slot) = family.parse(module: a.module), family.isPEFTParameterSlot(slot) else {
                moduleAdapters.append(a)
                continue
            }
            if case .expert = slot { expertLayers.insert(l); continue }
            // A 2-D ParamWrapper keeps lora_A [r, in] / lora_B [out, r] under the module holding the weight.
            let module = family.transformers5Module(a.module)
            add(module, a: values(a.a, a.rank * a.inFeatures), b: values(a.b, a.rank * a.outFeatures),
                rank: a.rank, inF: a.inFeatures, outF: a.outFeatures)
            parameters.append((parameterName(module + ".weight", layer: l), patternShape(a)))
        }
        for l in expertLayers.sorted() {
            // Experts without adapters (ESFT: not selected) are zero blocks of A and B: no delta
            // in peft, and skipped again when read back.
            let experts = adapters.layers[l].experts
            let e = experts.count
            let adapted = experts.filter { !$0.isEmpty }
            guard e > 0, let g0 = adapted.first?.gate, let d0 = adapted.first?.down,
                  adapted.allSatisfy({ $0.gate?.rank == g0.rank && $0.up?.rank == g0.rank && $0.down?.rank == d0.rank }) else {
                throw MoETuneError.invalid("layer \(l): peft's fused expert layout needs LoRA adapters on each adapted expert's gate, up and down projections, each kind with one rank")
            }
            // gate_up_proj [E, 2I, H]: A (E, 2r, H) as [E*2r, H], expert-major, rows [A_gate; A_up];
            // B (2I, 2r, E) as [2I, 2r*E], expert fastest, block-diagonal: gate rows read
            // columns 0..<r, up rows r..<2r (peft's PeftConcatenate of w1/w3). GPT-OSS's
            // gate_up [E, H, 2I] interleaves them: gate row o is B row 2o, up row o is 2o+1.
            let r = g0.rank, h = g0.inFeatures, inter = g0.outFeatures, r2 = 2 * r
            let row = Self.gateUpRow(family, inter: inter)
            var a = [Float](repeating: 0, count: e * r2 * h)
            var b = [Float](repeating: 0, count: 2 * inter * r2 * e)
            for (x, ex) in experts.enumerated() where !ex.isEmpty {
                for (half, ad) in [ex.gate!, ex.up!].enumerated() {
                    for j in 0..<r {
                        for i in 0..<h { a[(x * r2 + half * r + j) * h + i] = ad.a[j * h + i] }
                        for o in 0..<inter { b[row(half, o) * r2 * e + (half * r + j) * e + x] = ad.b[o * r + j] }
                    }
                }
            }
            let modules = family.fusedExpertAdapterModules(l)
            add(modules.gateUp, a: a, b: b, rank: e * r2, inF: h, outF: 2 * inter)
            // down_proj [E, H, I]: A (E, r, I) as [E*r, I]; B (H, r, E) as [H, r*E].
            let rd = d0.rank, di = d0.inFeatures, dout = d0.outFeatures
            var da = [Float](repeating: 0, count: e * rd * di)
            var db = [Float](repeating: 0, count: dout * rd * e)
            for (x, ex) in experts.enumerated() where !ex.isEmpty {
                let ad = ex.down!
                for j in 0..<rd {
                    for i in 0..<di { da[(x * rd + j) * di + i] = ad.a[j * di + i] }
                    for o in 0..<dout { db[o * rd * e + j * e + x] = ad.b[o * rd + j] }
                }
            }
            add(modules.down, a: da, b: db, rank: e * rd, inF: di, outF: dout)
            // Twice the rank; alpha so that alpha'/r' (rsLoRA: alpha'/sqrt(r')) is each expert's scale.
            let alphaGate = alpha(of: g0)
            parameters.append((parameterName(family.fusedGateUp(l), layer: l), (r2, spec.rslora ? alphaGate * 2.0.squareRoot() : 2 * alphaGate)))
            parameters.append((parameterName(family.fusedDown(l), layer: l), patternShape(d0)))
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
                // A router with a bias (GPT-OSS): peft's modules_to_save copy holds it too (frozen).
                if let bias = r.bias {
                    writer.add(.init(name: prefix + name + ".bias", shape: [r.experts],
                                     floats: UnsafeBufferPointer(start: bias, count: r.experts)))
                }
            }
        }
        for a in moduleAdapters {
            writer.add(.init(name: prefix + a.module + ".lora_A.weight", shape: [a.rank, a.inFeatures],
                             floats: UnsafeBufferPointer(start: a.a, count: a.rank * a.inFeatures)))
            writer.add(.init(name: prefix + a.module + ".lora_B.weight", shape: [a.outFeatures, a.rank],
                             floats: UnsafeBufferPointer(start: a.b, count: a.rank * a.outFeatures)))
        }
        let suffixes = Array(Set(moduleAdapters.map { targetSuffix($0.module) })).sorted()
        // Suffixes, not a regex over full paths (peft resolves a regex to leaf names and
        // remaps some of them for transformers 5); a layer subset goes in layers_to_transform
        // (which cannot hold lm_head: TrainConfig refuses head with a layer subset).
        var layers: Any = NSNull()
        var layersPattern: Any = NSNull()
        if spec.layers != .all, !moduleAdapters.isEmpty {
            let indices = Set(moduleAdapters.compactMap { a -> Int? in
                let parts = a.module.split(separator: ".")
                return parts.count > 2 && parts[1] == "layers" ? Int(parts[2]) : nil
            })
            layers = indices.sorted()
            layersPattern = "layers"
        }
        var rankPattern: [String: Int] = [:]
        var alphaPattern: [String: Double] = [:]
        for a in moduleAdapters {
            guard let shape = patternShape(a) else { continue }
            // The router is a module in transformers 4 ("gate") and a parameter in 5 ("gate.weight").
            let suffix = targetSuffix(a.module)
            for key in family.kind(of: a.module) == .router ? [suffix, suffix + ".weight"] : [suffix] {
                rankPattern[key] = shape.rank
                alphaPattern[key] = shape.alpha
            }
        }
        // peft matches pattern keys as regular expressions against the parameter's full name.
        for p in parameters {
            guard let shape = p.shape else { continue }
            let key = NSRegularExpression.escapedPattern(for: p.name)
            rankPattern[key] = shape.rank
            alphaPattern[key] = shape.alpha
        }
        let targetParameters = Array(Set(parameters.map(\.name))).sorted()
        // peft wraps every module whose name ends with a modules_to_save entry (a plain string
        // suffix: "gate" would also take Qwen2-MoE's shared_expert_gate), so name the router
        // with its block, in both layouts' names.
        let savedModules = Array(Set(fullRouters.flatMap { r in
            [r.module, family.transformers5Module(r.module)].map { $0.split(separator: ".").suffix(2).joined(separator: ".") }
        })).sorted()
        var config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel,
            "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": suffixes, "bias": "none", "fan_in_fan_out": false,
            "use_rslora": spec.rslora, "use_dora": false, "rank_pattern": rankPattern,
            "alpha_pattern": alphaPattern, "modules_to_save": fullRouters.isEmpty ? NSNull() : savedModules as Any, "layers_to_transform": layers,
            "layers_pattern": layersPattern,
            "init_lora_weights": true, "inference_mode": true, "revision": NSNull(),
        ]
        if !targetParameters.isEmpty { config["target_parameters"] = targetParameters }
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try writer.write(to: dir + "/adapter_model.safetensors")
        try AtomicFile.write(json, to: dir + "/adapter_config.json")
    }

    /// The row of a fused gate_up LoRA B [2I, r] that holds gate (half 0) or up (half 1)
    /// row o: gate rows then up rows, or interleaved (GPT-OSS: 2o, 2o + 1).
    package static func gateUpRow(_ family: ModelFamily, inter: Int) -> (Int, Int) -> Int {
        family.moe?.transposedInterleaved == true ? { half, o in 2 * o + half } : { half, o in half * inter + o }
    }

    /// Reads the adapter in `dir` for `model`. Ranks come from the tensors, scales from
    /// lora_alpha (or alpha_pattern) and use_rslora.
    public static func load(directory dir: String, model: Transformer) throws -> AdapterSet {
        try load(directory: dir, shapes: ModuleShapes(model: model))
    }

    /// The same against the module shapes alone (merge: no weights loaded).
    public static func load(directory dir: String, shapes model: ModuleShapes) throws -> AdapterSet {
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
        guard let alpha = (cfg["lora_alpha"] as? NSNumber)?.doubleValue, !isJSONBool(cfg["lora_alpha"]), alpha.isFinite else {
            throw MoETuneError.config(path: configPath, key: "lora_alpha", message: "missing or not a number (got \(cfg["lora_alpha"].map { "\($0)" } ?? "nothing"))")
        }
        let rslora = cfg["use_rslora"] as? Bool ?? false
        /// rank_pattern / alpha_pattern: key → (value, regex matching a module path).
        func patterns(_ key: String) throws -> [(key: String, value: Double, regex: NSRegularExpression)] {
            guard let raw = cfg[key], !(raw is NSNull) else { return [] }
            guard let dict = raw as? [String: Any] else { throw MoETuneError.config(path: configPath, key: key, message: "is not an object") }
            return try dict.keys.sorted().map { k in
                guard let v = (dict[k] as? NSNumber)?.doubleValue, !isJSONBool(dict[k]), v.isFinite else {
                    throw MoETuneError.config(path: configPath, key: key, message: "\(Printable.quoted(k)) has \(dict[k].map { "\($0)" } ?? "no value"), not a number")
                }
                // A rank is a whole number that fits in memory (Int(1e300) would trap).
                if key == "rank_pattern", v.rounded() != v || !(1...Double(1 << 20)).contains(v) {
                    throw MoETuneError.config(path: configPath, key: key, message: "\(Printable.quoted(k)) has \(v), not a rank (a whole number in 1...\(1 << 20))")
                }
                guard let re = try? NSRegularExpression(pattern: "^(.*\\.)?(\(k))$") else {
                    throw MoETuneError.config(path: configPath, key: key, message: "\(Printable.quoted(k)) is not a valid regular expression")
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

        // A module's patterns may name its weight (a 2-D `target_parameters` entry: "mlp.gate.weight").
        func alphaFor(_ module: String) -> Double {
            match(alphaPattern, [module, module + ".weight", family.transformers5Module(module) + ".weight"]) ?? alpha
        }
        /// `patternName`: the name peft matches the patterns against where it differs from
        /// the module (a fused expert parameter, "...mlp.experts.gate_up_proj": peft 0.21 gives
        /// gate_up twice the rank and alpha through rank_pattern / alpha_pattern). `rank`: the
        /// rank peft scales by (the fused rank where a block-diagonal gate_up is split).
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
            guard ok else { throw MoETuneError.file(path: weightsPath, message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); expected a float type") }
            // The one finiteness check of every command that loads an adapter (eval, merge,
            // generate, export-lora): a NaN or inf weight only gives garbage.
            if let i = out.firstIndex(where: { !$0.isFinite }) {
                throw MoETuneError.file(path: weightsPath, message: "tensor \(Printable.quoted(name)) holds a non-finite value (element \(i) is \(out[i])); "
                    + "the adapter is damaged (a diverged run?): train it again or use an earlier checkpoint")
            }
            return out
        }

        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_B.weight") {
            let a = String(name.dropLast(".lora_B.weight".count)) + ".lora_A.weight"
            guard file.tensors[a] != nil else {
                throw MoETuneError.file(path: weightsPath, message: "tensor \(Printable.quoted(name)) has no lora_A beside it")
            }
        }
        // Collect (module → A, B) in moe-tune's per-module naming.
        var pieces: [(module: String, a: [Float], b: [Float], rank: Int, patternName: String?, scaleRank: Int?)] = []
        var seen = Set<String>()
        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_A.weight") {
            guard name.hasPrefix(prefix) else {
                throw MoETuneError.file(path: weightsPath, message: "tensor \(Printable.quoted(name)) does not start with \(prefix)")
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
                        // Block-diagonal (moe-tune's writer, and peft's conversion of per-expert
                        // gate/up adapters): gate rows use only columns 0..<r/2, up rows only
                        // r/2..<r; split back into the two rank-r/2 adapters, each scaled as peft
                        // scales the fused one. Otherwise (peft's own: one A for both) gate and
                        // up share A at the full rank.
                        // GPT-OSS interleaves the rows (gate o at 2o, up o at 2o+1).
                        let half = rank / 2, row = Self.gateUpRow(family, inter: inter)
                        let blockDiagonal = rank % 2 == 0 && (0..<inter).allSatisfy { o in
                            (0..<half).allSatisfy { j in bx[row(0, o) * rank + half + j] == 0 && bx[row(1, o) * rank + j] == 0 }
                        }
                        if blockDiagonal {
                            var gb = [Float](repeating: 0, count: inter * half), ub = gb
                            for o in 0..<inter {
                                for j in 0..<half {
                                    gb[o * half + j] = bx[row(0, o) * rank + j]
                                    ub[o * half + j] = bx[row(1, o) * rank + half + j]
                                }
                            }
                            pieces.append((name(.gate), Array(ax[0..<(half * inF)]), gb, half, param, rank))
                            pieces.append((name(.up), Array(ax[(half * inF)...]), ub, half, param, rank))
                        } else {
                            let rows = { (h: Int) in (0..<inter).flatMap { o in bx[(row(h, o) * rank)..<((row(h, o) + 1) * rank)] } }
                            pieces.append((name(.gate), ax, rows(0), rank, param, nil))
                            pieces.append((name(.up), ax, rows(1), rank, param, nil))
                        }
                    } else {
                        pieces.append((name(.down), ax, bx, rank, family.fusedDown(fused.layer), nil))
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
            let expectedRank = match(rankPattern, [module, canonical, module + ".weight"]).map { Int($0) } ?? r
            guard aInfo.shape[0] == expectedRank else {
                throw MoETuneError.config(path: configPath, key: "r",
                    message: "module \(module) has rank \(aInfo.shape[0]) in \(weightsPath) but the config gives \(expectedRank) (r or rank_pattern)")
            }
            pieces.append((canonical, try floats(name), try floats(bName), aInfo.shape[0], nil, nil))
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
                    throw MoETuneError.file(path: weightsPath, message: "tensor \(Printable.quoted(name)) is not a router weight of this model")
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
        // An expert whose fused A and B blocks are all zero has no delta (save writes an expert
        // without adapters so, as with ESFT): it is left out, as it was trained.
        pieces.removeAll { $0.patternName != nil && $0.a.allSatisfy { $0 == 0 } && $0.b.allSatisfy { $0 == 0 } }
        // One order whatever the layout on disk (module names as the per-expert tensors sort).
        pieces.sort { $0.module + "." < $1.module + "." }
        if let i = pieces.indices.dropFirst().first(where: { pieces[$0].module == pieces[$0 - 1].module }) {
            throw MoETuneError.file(path: weightsPath, message: "module \(pieces[i].module) appears twice (per-expert and fused tensors)")
        }
        var plan: [AdapterPlan] = []
        for p in pieces {
            guard let w = model.linear(p.module) else {
                throw MoETuneError.file(path: weightsPath, message: "module \(p.module) does not exist in the base model")
            }
            guard p.a.count == p.rank * w.cols, p.b.count == w.rows * p.rank else {
                throw MoETuneError.file(path: weightsPath,
                    message: "module \(p.module): adapter shapes A [\(p.rank), \(p.a.count / max(p.rank, 1))], B [\(p.b.count / max(p.rank, 1)), \(p.rank)] do not fit the base weight [\(w.rows), \(w.cols)]")
            }
            plan.append(AdapterPlan(module: p.module, rank: p.rank, scale: scale(p.module, rank: p.scaleRank ?? p.rank, patternName: p.patternName)))
        }
        let kinds = Set(plan.compactMap { family.kind(of: $0.module) })
        var spec = LoRASpec(rank: r, alpha: alpha, dropout: 0, rslora: rslora, targets: kinds, layers: .all)
        spec.trainRouters = !routerWeights.isEmpty
        let set = try AdapterSet(shapes: model, plan: plan, spec: spec, seed: 0, fullRouters: routerWeights.keys.sorted())
        for (adapter, p) in zip(set.all, pieces) {
            adapter.a.update(from: p.a, count: p.a.count)
            adapter.b.update(from: p.b, count: p.b.count)
        }
        for (l, w) in routerWeights { set.routers[l]!.weight.update(from: w, count: w.count) }
        return set
    }
}
