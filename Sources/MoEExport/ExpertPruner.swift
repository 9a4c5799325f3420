import Foundation
import MoEFormats
import MoEText
import MoECore

/// Writes a model with some experts of each routed layer removed (`moe-tune prune`): the
/// kept experts renumbered 0..<n in ascending order of their old ids, the router's rows (and
/// bias) of the dropped experts removed, the expert count in config.json (or the GGUF
/// metadata) set to n, and top-k kept unless asked otherwise. Every other tensor is copied
/// byte for byte. Streams like Merger: one tensor in memory at a time.
/// - a Hugging Face folder from a folder (per-expert or fused expert tensors, in their dtype);
/// - a GGUF from a GGUF (the stacked ffn_*_exps tensors and ffn_gate_inp sliced in their
///   own type, quantized blocks included, so nothing is re-rounded);
/// - a GGUF from a folder: the pruned folder (a temporary beside the output), converted as
///   `merge --format gguf` converts a base.
public enum ExpertPruner {
    public struct Summary: Sendable {
        public var tensors: Int
        public var bytes: Int
        public var experts: Int
        public var topK: Int
    }

    /// Refuses, before any work, a model whose experts cannot be pruned: a dense one, GPT-OSS
    /// (transposed fused experts), group-limited routing (DeepSeek-V2's n_group).
    public static func checkPrunable(_ c: ModelConfig, path: String) throws {
        let f = c.family
        guard c.isMoE, f.moe != nil else { throw MoETuneError.file(path: path, message: "a dense \(f.name) model has no experts to prune") }
        guard !ExpertLayout.isTransposedInterleaved(f) else { throw MoETuneError.file(path: path, message: "pruning \(f.name) models is not supported") }
        guard c.expertGroups == nil else {
            throw MoETuneError.file(path: path, message: "group-limited routing (n_group) cannot be pruned: the groups would no longer divide the experts")
        }
    }

    /// The experts kept per routed layer: the same number in every routed layer, distinct
    /// ids within 0..<E, no layer without a router; top-k (`topK` or the model's) at most
    /// that number. Returns (experts kept, top-k).
    package static func check(_ c: ModelConfig, kept: [Int: [Int]], topK: Int?, path: String) throws -> (experts: Int, topK: Int) {
        try checkPrunable(c, path: path)
        let routed = (0..<c.numLayers).filter(c.isMoELayer)
        guard Set(kept.keys) == Set(routed) else {
            throw MoETuneError.invalid("internal: experts to keep given for layers \(kept.keys.sorted()), the model routes in \(routed)")
        }
        let n = kept[routed[0]]?.count ?? 0
        for (l, ids) in kept {
            guard ids.count == n, Set(ids).count == n, ids.allSatisfy({ (0..<c.numExperts).contains($0) }) else {
                throw MoETuneError.invalid("internal: layer \(l) keeps experts \(ids) (of \(c.numExperts); every layer must keep \(n) distinct ones)")
            }
        }
        guard n >= 1 else { throw MoETuneError.invalid("every layer must keep at least one expert") }
        let k = topK ?? c.expertsPerToken
        guard k >= 1, k <= n else {
            throw MoETuneError.invalid("top-k \(k) exceeds the \(n) experts kept per layer: keep more experts or pass --top-k at most \(n)")
        }
        return (n, k)
    }

    /// What becomes of one checkpoint tensor.
    enum Fate { case copy, drop, rename(String), rows(Int) }

    /// Every expert, router and fused tensor of the routed layers, by checkpoint name: the
    /// tensors of a fused layout (ExpertLayout, experts outermost) keep their kept experts'
    /// rows, per-expert tensors are renamed or dropped.
    static func fates(_ ck: Checkpoint, kept: [Int: [Int]]) -> [String: Fate] {
        let c = ck.config, f = c.family
        var out: [String: Fate] = [:]
        for (l, ids) in kept {
            var routers = [f.weight(.router, layer: l), f.bias(.router, layer: l), f.fusedRouter(l)]
            if let own = f.checkpointFused(l) { routers.append(own.router) }
            for r in routers { out[r] = .rows(l) }
            if let fused = ExpertLayout.of(f, layer: l, contains: ck.contains).tensors(f, layer: l, contains: ck.contains) {
                out[fused.router] = .rows(l); out[fused.gateUp] = .rows(l); out[fused.down] = .rows(l)
            }
            for e in 0..<c.numExperts {
                for p in FeedForwardPart.allCases {
                    let name = f.weight(.expert(e, p), layer: l)
                    out[name] = ids.firstIndex(of: e).map { .rename(f.weight(.expert($0, p), layer: l)) } ?? .drop
                }
            }
        }
        return out
    }

    /// Rows `rows` (outermost dimension) of a tensor of `count0` rows stored in `bytes`.
    static func selectRows(_ bytes: UnsafeRawBufferPointer, rows: [Int], of count0: Int) -> Data {
        let rowBytes = bytes.count / count0
        var out = Data(capacity: rowBytes * rows.count)
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        for r in rows { out.append(base + r * rowBytes, count: rowBytes) }
        return out
    }

    /// A Hugging Face folder at `outDir` (a new folder, or with `overwrite` one moe-tune wrote).
    public static func pruneFolder(model: String, kept: [Int: [Int]], topK: Int?, outDir: String, overwrite: Bool,
                                   maxShardBytes: Int = 2 << 30) throws -> Summary {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: overwrite, inputs: [model], command: "prune")
        let ck = try Checkpoint(directory: model)
        guard ck.gguf == nil else {
            throw MoETuneError.file(path: model, message: "a GGUF model prunes into a GGUF file only (it has no config.json for a Hugging Face folder): give --out FILE.gguf")
        }
        return try folder.write { try writeFolder(ck, model: model, kept: kept, topK: topK, into: $0, maxShardBytes: maxShardBytes) }
    }

    /// Writes the pruned folder's files into the existing folder `dir`.
    static func writeFolder(_ ck: Checkpoint, model: String, kept: [Int: [Int]], topK: Int?, into dir: String,
                            maxShardBytes: Int) throws -> Summary {
        let c = ck.config
        let (n, k) = try check(c, kept: kept, topK: topK, path: model)
        try Merger.checkBase(ck)
        let fates = fates(ck, kept: kept)
        var entries: [(name: String, source: TensorInfo, shape: [Int], rows: [Int]?)] = []
        for name in ck.tensorNames.sorted() {
            let info = ck.info(name)!
            guard [.f32, .f16, .bf16, .f64].contains(info.dtype) else {
                throw MoETuneError.file(path: ck.path(of: name), message: "tensor \(Printable.quoted(name)) is stored as \(info.dtype.rawValue): prune the full-precision checkpoint (then quantize)")
            }
            switch fates[name] ?? .copy {
            case .copy: entries.append((name, info, info.shape, nil))
            case .drop: continue
            case .rename(let to): entries.append((to, info, info.shape, nil))
            case .rows(let l): entries.append((name, info, [n] + info.shape.dropFirst(), kept[l]!))
            }
        }
        entries.sort { $0.name < $1.name }
        let bytes = { (e: (name: String, source: TensorInfo, shape: [Int], rows: [Int]?)) in
            e.rows.map { e.source.byteCount / e.source.shape[0] * $0.count } ?? e.source.byteCount
        }
        var shards: [[Int]] = [[]]
        var shardBytes = 0, total = 0
        for (i, e) in entries.enumerated() {
            if shardBytes > 0, shardBytes + bytes(e) > maxShardBytes { shards.append([]); shardBytes = 0 }
            shards[shards.count - 1].append(i)
            shardBytes += bytes(e)
            total += bytes(e)
        }
        var weightMap: [String: String] = [:]
        for (s, shard) in shards.enumerated() {
            let file = shards.count == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", s + 1, shards.count)
            let out = try SafeTensorsStreamWriter(path: dir + "/" + file, tensors: shard.map {
                SafeTensorsWriter.Layout(name: entries[$0].name, dtype: entries[$0].source.dtype, shape: entries[$0].shape, byteCount: bytes(entries[$0]))
            })
            let byName = Dictionary(uniqueKeysWithValues: shard.map { (entries[$0].name, entries[$0]) })
            for t in out.order {
                let e = byName[t.name]!
                guard let stored = ck.storedBytes(e.source.name) else { throw MoETuneError.file(path: model, message: "cannot read tensor \(e.source.name)") }
                try stored.withUnsafeBytes { raw in
                    if let rows = e.rows {
                        try selectRows(raw, rows: rows, of: e.source.shape[0]).withUnsafeBytes { try out.write(e.name, bytes: $0) }
                    } else {
                        try out.write(e.name, bytes: raw)
                    }
                }
                weightMap[e.name] = file
            }
            try out.finish()
        }
        if shards.count > 1 {
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            try AtomicFile.write(try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]),
                                 to: dir + "/model.safetensors.index.json")
        }
        let text = try String(contentsOfFile: model + "/config.json", encoding: .utf8)
        try AtomicFile.write(Data(try prunedConfig(text, family: c.family, experts: n, topK: topK, path: model + "/config.json").utf8),
                             to: dir + "/config.json")
        try ModelFolderWriter.copyTokenizerFiles(from: model, to: dir)
        return Summary(tensors: entries.count, bytes: total, experts: n, topK: k)
    }

    /// config.json's text with every expert-count key set to `experts` (the family's own key
    /// added when the file has none) and, with `topK`, num_experts_per_tok: edited in the
    /// text, as merge does, so that the rest stays as it was (0.0 stays 0.0).
    package static func prunedConfig(_ text: String, family f: ModelFamily, experts: Int, topK: Int?, path: String) throws -> String {
        var out = text
        func set(_ key: String, _ value: Int) {
            let pattern = "(\"\(key)\"\\s*:\\s*)[0-9]+"
            if out.range(of: pattern, options: .regularExpression) != nil {
                out = out.replacingOccurrences(of: pattern, with: "$1\(value)", options: .regularExpression)
            } else if let brace = out.firstIndex(of: "{") {
                out.insert(contentsOf: "\n  \"\(key)\": \(value),", at: out.index(after: brace))
            }
        }
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
        let present = MoENames.expertCountKeys.filter { json[$0] != nil && !(json[$0] is NSNull) }
        for key in present.isEmpty ? [f.moe!.expertCountKey] : present { set(key, experts) }
        if let topK { set(MoENames.topKKey, topK) }
        guard let check = (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [String: Any],
              (present.isEmpty ? [f.moe!.expertCountKey] : present).allSatisfy({ (check[$0] as? NSNumber)?.intValue == experts }),
              topK == nil || (check[MoENames.topKKey] as? NSNumber)?.intValue == topK else {
            throw MoETuneError.file(path: path, message: "cannot set the expert count in this config.json's text")
        }
        return out
    }
}
