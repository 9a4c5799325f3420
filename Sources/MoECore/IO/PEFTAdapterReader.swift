import Foundation
import MoEFormats
import MoEText

/// The steps of PEFTAdapter.load: adapter_config.json, the LoRA tensors mapped to moe-tune's
/// per-module naming (fused experts split per expert), full routers, and the AdapterSet.
extension PEFTAdapter {
    /// A rank_pattern / alpha_pattern entry: key → value, and a regex matching a module path.
    package typealias Pattern = (key: String, value: Double, regex: NSRegularExpression)

    /// adapter_config.json as load reads it.
    package struct ReadConfig {
        package var path: String
        /// The whole object (modules_to_save, target_modules, target_parameters are read from it).
        package var json: [String: Any]
        package var r: Int
        package var alpha: Double
        package var rslora: Bool
        package var alphaPattern: [Pattern]
        package var rankPattern: [Pattern]
    }

    /// One module's adapter as read: A [rank, in] and B [out, rank]. `patternName`: the name
    /// peft matches the patterns against where it differs from the module (a fused expert
    /// parameter, "...mlp.experts.gate_up_proj": peft 0.21 gives gate_up twice the rank and
    /// alpha through rank_pattern / alpha_pattern). `scaleRank`: the rank peft scales by
    /// where it is not `rank` (the fused rank where a block-diagonal gate_up is split).
    package struct Piece {
        package var module: String
        package var a: [Float]
        package var b: [Float]
        package var rank: Int
        package var patternName: String? = nil
        package var scaleRank: Int? = nil
    }

    /// Reads and checks `dir`/adapter_config.json: a LORA adapter (no DoRA) with a positive
    /// integer r, a numeric lora_alpha, and rank_pattern / alpha_pattern that can be read.
    /// No silent fallbacks: each refusal is a config error naming its key.
    package static func readConfig(directory dir: String) throws -> ReadConfig {
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
        guard let alpha = (cfg["lora_alpha"] as? NSNumber)?.doubleValue, !isJSONBool(cfg["lora_alpha"]), alpha.isFinite else {
            throw MoETuneError.config(path: configPath, key: "lora_alpha", message: "missing or not a number (got \(cfg["lora_alpha"].map { "\($0)" } ?? "nothing"))")
        }
        let rslora = cfg["use_rslora"] as? Bool ?? false
        let alphaPattern = try patterns("alpha_pattern", in: cfg, path: configPath)
        let rankPattern = try patterns("rank_pattern", in: cfg, path: configPath)
        return ReadConfig(path: configPath, json: cfg, r: r, alpha: alpha, rslora: rslora,
                          alphaPattern: alphaPattern, rankPattern: rankPattern)
    }

    /// rank_pattern / alpha_pattern (`key`) of `cfg`, sorted by key: each value a finite
    /// number (a rank a whole number in 1...2^20), each key a valid regular expression.
    static func patterns(_ key: String, in cfg: [String: Any], path configPath: String) throws -> [Pattern] {
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

    /// The value of the first pattern (in key order) that names one of `modules`, as a suffix
    /// or as a regular expression; nil if none does.
    package static func match(_ table: [Pattern], _ modules: [String]) -> Double? {
        for p in table {
            for module in modules {
                if module == p.key || module.hasSuffix("." + p.key) { return p.value }
                if p.regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil { return p.value }
            }
        }
        return nil
    }

    /// The scale peft gives `module`'s adapter: alpha (alpha_pattern's where one names the
    /// module, its weight, or `patternName`) over `rank`, or its square root with use_rslora.
    /// A module's patterns may name its weight (a 2-D `target_parameters` entry: "mlp.gate.weight").
    static func scale(_ module: String, rank: Int, patternName: String?, config: ReadConfig, family: ModelFamily) -> Float {
        let names = [module, module + ".weight", family.transformers5Module(module) + ".weight"]
        let a = patternName.flatMap { match(config.alphaPattern, [$0]) } ?? match(config.alphaPattern, names) ?? config.alpha
        return Float(config.rslora ? a / Double(rank).squareRoot() : a / Double(rank))
    }

    /// A tensor of the adapter file as fp32 values: a float type, every value finite.
    static func floats(_ name: String, in file: SafeTensorsFile) throws -> [Float] {
        let info = file.tensors[name]!
        var out = [Float](repeating: 0, count: info.count)
        let ok = out.withUnsafeMutableBufferPointer {
            FloatConversion.toFloat(file.bytes(of: info).baseAddress!, dtype: info.dtype, count: info.count, into: $0.baseAddress!)
        }
        guard ok else { throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); expected a float type") }
        // The one finiteness check of every command that loads an adapter (eval, merge,
        // generate, export-lora): a NaN or inf weight only gives garbage.
        if let i = out.firstIndex(where: { !$0.isFinite }) {
            throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) holds a non-finite value (element \(i) is \(out[i])); "
                + "the adapter is damaged (a diverged run?): train it again or use an earlier checkpoint")
        }
        return out
    }

    /// The module a "*.lora_A.weight" tensor adapts, as the file names it: the key without
    /// "base_model.model." and ".lora_A.weight". A key without the prefix is refused.
    package static func module(ofLoRAKey name: String, path: String) throws -> String {
        guard name.hasPrefix(prefix) else {
            throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(name)) does not start with \(prefix)")
        }
        return String(name.dropFirst(prefix.count).dropLast(".lora_A.weight".count))
    }

    /// Every module's adapter in the file, in moe-tune's per-module naming (canonical module
    /// names, fused experts split per expert), in key order; each lora_B needs its lora_A, and
    /// a plain module's rank must be r or its rank_pattern's.
    package static func readPieces(_ file: SafeTensorsFile, config: ReadConfig, shapes model: ModuleShapes) throws -> [Piece] {
        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_B.weight") {
            let a = String(name.dropLast(".lora_B.weight".count)) + ".lora_A.weight"
            guard file.tensors[a] != nil else {
                throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) has no lora_A beside it")
            }
        }
        let family = model.family, weightsPath = file.path
        var pieces: [Piece] = []
        var seen = Set<String>()
        for name in file.tensors.keys.sorted() where name.hasSuffix(".lora_A.weight") {
            let module = try Self.module(ofLoRAKey: name, path: weightsPath)
            let bName = prefix + module + ".lora_B.weight"
            guard let aInfo = file.tensors[name], let bInfo = file.tensors[bName], aInfo.shape.count == 2, bInfo.shape.count == 2 else {
                throw MoETuneError.file(path: weightsPath, message: "module \(module): lora_A/lora_B missing or not 2-D")
            }
            if let fused = family.fusedExpertAdapter(module) {
                pieces += try fusedExpertPieces(module, layer: fused.layer, gateUp: fused.gateUp, file: file, config: model.config)
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
            let expectedRank = match(config.rankPattern, [module, canonical, module + ".weight"]).map { Int($0) } ?? config.r
            guard aInfo.shape[0] == expectedRank else {
                throw MoETuneError.config(path: config.path, key: "r",
                    message: "module \(module) has rank \(aInfo.shape[0]) in \(weightsPath) but the config gives \(expectedRank) (r or rank_pattern)")
            }
            pieces.append(Piece(module: canonical, a: try floats(name, in: file), b: try floats(bName, in: file), rank: aInfo.shape[0]))
        }
        return pieces
    }

    /// A fused expert adapter (`module`, layer `l`'s gate_up_proj or down_proj) split into
    /// one adapter per expert (ExpertLayout.FusedLoRA: A (E, r, in) as [E*r, in]; B (out, r, E)
    /// as [out, r*E], expert fastest).
    package static func fusedExpertPieces(_ module: String, layer l: Int, gateUp: Bool, file: SafeTensorsFile,
                                          config c: ModelConfig) throws -> [Piece] {
        let name = prefix + module + ".lora_A.weight", bName = prefix + module + ".lora_B.weight"
        let aInfo = file.tensors[name]!, bInfo = file.tensors[bName]!, family = c.family
        let e = c.numExperts
        guard e > 0, aInfo.shape[0] % e == 0 else {
            throw MoETuneError.file(path: file.path, message: "module \(module): fused expert adapter does not match \(e) experts")
        }
        let rank = aInfo.shape[0] / e, inF = aInfo.shape[1], outF = bInfo.shape[0]
        guard bInfo.shape[1] == rank * e else {
            throw MoETuneError.file(path: file.path, message: "module \(module): lora_B shape \(bInfo.shape) does not match lora_A \(aInfo.shape)")
        }
        let a = try floats(name, in: file), b = try floats(bName, in: file)
        let inter = c.expertIntermediateSize
        let lora = ExpertLayout.FusedLoRA(experts: e, rank: rank, inFeatures: inF, outFeatures: outF)
        var pieces: [Piece] = []
        for x in 0..<e {
            let (ax, bx) = lora.expert(x, a: a, b: b)
            let expert = { (part: FeedForwardPart) in family.module(.expert(x, part), layer: l) }
            guard gateUp else {
                pieces.append(Piece(module: expert(.down), a: ax, b: bx, rank: rank, patternName: family.fusedDown(l)))
                continue
            }
            guard outF == 2 * inter else {
                throw MoETuneError.file(path: file.path, message: "module \(module): gate_up lora_B has \(outF) rows, expected \(2 * inter)")
            }
            let (gate, up) = splitGateUp(a: ax, b: bx, rank: rank, inFeatures: inF, inter: inter, family: family)
            pieces.append(Piece(module: expert(.gate), a: gate.a, b: gate.b, rank: gate.rank,
                                patternName: family.fusedGateUp(l), scaleRank: gate.scaleRank))
            pieces.append(Piece(module: expert(.up), a: up.a, b: up.b, rank: up.rank,
                                patternName: family.fusedGateUp(l), scaleRank: up.scaleRank))
        }
        return pieces
    }

    /// One expert's gate_up adapter (A [rank, in], B [2I, rank]) as a gate and an up adapter.
    /// Block-diagonal (moe-tune's writer, and peft's conversion of per-expert gate/up
    /// adapters): gate rows use only columns 0..<r/2, up rows only r/2..<r; split back into
    /// the two rank-r/2 adapters, each scaled as peft scales the fused one (`scaleRank` r).
    /// Otherwise (peft's own: one A for both) gate and up share A at the full rank.
    /// GPT-OSS interleaves the rows (gate o at 2o, up o at 2o+1): ExpertLayout.gateUpRow of
    /// the family's transformers 5 layout.
    package static func splitGateUp(a ax: [Float], b bx: [Float], rank: Int, inFeatures inF: Int, inter: Int, family: ModelFamily)
        -> (gate: (a: [Float], b: [Float], rank: Int, scaleRank: Int?), up: (a: [Float], b: [Float], rank: Int, scaleRank: Int?)) {
        let half = rank / 2, layout = ExpertLayout.transformers5(family)
        let row = { (h: Int, o: Int) in layout.gateUpRow(h == 0 ? .gate : .up, o, inter: inter) }
        let blockDiagonal = rank % 2 == 0 && (0..<inter).allSatisfy { o in
            (0..<half).allSatisfy { j in bx[row(0, o) * rank + half + j] == 0 && bx[row(1, o) * rank + j] == 0 }
        }
        guard blockDiagonal else {
            let rows = { (h: Int) in (0..<inter).flatMap { o in bx[(row(h, o) * rank)..<((row(h, o) + 1) * rank)] } }
            return ((ax, rows(0), rank, nil), (ax, rows(1), rank, nil))
        }
        var gb = [Float](repeating: 0, count: inter * half), ub = gb
        for o in 0..<inter {
            for j in 0..<half {
                gb[o * half + j] = bx[row(0, o) * rank + j]
                ub[o * half + j] = bx[row(1, o) * rank + half + j]
            }
        }
        return ((Array(ax[0..<(half * inF)]), gb, half, rank), (Array(ax[(half * inF)...]), ub, half, rank))
    }

    /// Full router weights (modules_to_save naming the router), in either layout's naming,
    /// by layer; each must be a router weight [E, H] of this model.
    static func readRouterWeights(_ file: SafeTensorsFile, config: ReadConfig, shapes model: ModuleShapes) throws -> [Int: [Float]] {
        var routerWeights: [Int: [Float]] = [:]
        let family = model.family
        let savesModules = (config.json["modules_to_save"] as? [String]) ?? []
        let routerName = family.moe?.router ?? "gate"
        guard model.config.isMoE, savesModules.contains(where: { $0 == routerName || $0.hasSuffix("." + routerName) }) else { return [:] }
        for name in file.tensors.keys where name.hasSuffix("." + routerName + ".weight") && !name.contains("lora_") {
            let module = family.canonicalModule(String(name.dropFirst(prefix.count).dropLast(".weight".count)))
            guard let (l, slot) = family.parse(module: module), slot == .router, l < model.config.numLayers,
                  file.tensors[name]!.shape == [model.config.numExperts, model.config.hiddenSize] else {
                throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) is not a router weight of this model")
            }
            routerWeights[l] = try floats(name, in: file)
        }
        return routerWeights
    }

    /// As peft does: target_modules (a list of suffixes) must name at least one module the
    /// tensors hold (unless the adapter has target_parameters).
    static func checkTargetModules(_ file: SafeTensorsFile, config: ReadConfig) throws {
        guard let targets = config.json["target_modules"] as? [String], !targets.isEmpty,
              (config.json["target_parameters"] as? [Any] ?? []).isEmpty else { return }
        let modules = file.tensors.keys.filter { $0.hasSuffix(".lora_A.weight") }.map { String($0.dropLast(".lora_A.weight".count)) }
        guard targets.contains(where: { t in modules.contains { $0 == t || $0.hasSuffix("." + t) } }) else {
            throw MoETuneError.config(path: config.path, key: "target_modules", message: "\(targets) match none of the adapter's modules")
        }
    }

    /// The pieces in one order whatever the layout on disk (module names as the per-expert
    /// tensors sort), without fused experts whose A and B are all zero (save writes an expert
    /// without adapters so, as with ESFT: left out, as it was trained); a module twice is refused.
    static func orderedPieces(_ pieces: [Piece], path: String) throws -> [Piece] {
        var pieces = pieces
        pieces.removeAll { $0.patternName != nil && $0.a.allSatisfy { $0 == 0 } && $0.b.allSatisfy { $0 == 0 } }
        pieces.sort { $0.module + "." < $1.module + "." }
        if let i = pieces.indices.dropFirst().first(where: { pieces[$0].module == pieces[$0 - 1].module }) {
            throw MoETuneError.file(path: path, message: "module \(pieces[i].module) appears twice (per-expert and fused tensors)")
        }
        return pieces
    }

    /// The AdapterSet holding `pieces` (each checked against its base weight's shape and
    /// scaled as peft scales it) and the full `routers`.
    static func adapterSet(_ pieces: [Piece], routers: [Int: [Float]], config: ReadConfig, shapes model: ModuleShapes,
                           path weightsPath: String) throws -> AdapterSet {
        let family = model.family
        var plan: [AdapterPlan] = []
        for p in pieces {
            guard let w = model.linear(p.module) else {
                throw MoETuneError.file(path: weightsPath, message: "module \(p.module) does not exist in the base model")
            }
            guard p.a.count == p.rank * w.cols, p.b.count == w.rows * p.rank else {
                throw MoETuneError.file(path: weightsPath,
                    message: "module \(p.module): adapter shapes A [\(p.rank), \(p.a.count / max(p.rank, 1))], B [\(p.b.count / max(p.rank, 1)), \(p.rank)] do not fit the base weight [\(w.rows), \(w.cols)]")
            }
            let s = scale(p.module, rank: p.scaleRank ?? p.rank, patternName: p.patternName, config: config, family: family)
            plan.append(AdapterPlan(module: p.module, rank: p.rank, scale: s))
        }
        let kinds = Set(plan.compactMap { family.kind(of: $0.module) })
        var spec = LoRASpec(rank: config.r, alpha: config.alpha, dropout: 0, rslora: config.rslora, targets: kinds, layers: .all)
        spec.trainRouters = !routers.isEmpty
        let set = try AdapterSet(shapes: model, plan: plan, spec: spec, seed: 0, fullRouters: routers.keys.sorted())
        for (adapter, p) in zip(set.all, pieces) {
            adapter.a.update(from: p.a, count: p.a.count)
            adapter.b.update(from: p.b, count: p.b.count)
        }
        for (l, w) in routers { set.routers[l]!.weight.update(from: w, count: w.count) }
        return set
    }
}
