import Foundation
import MoEFormats
import MoEText
import MoECore

extension ExpertPruner {
    /// A PEFT adapter of `model` pruned as the model is: the dropped experts' adapters removed,
    /// the kept ones renumbered, a router LoRA's B (and a router trained in full) losing the
    /// dropped experts' rows; every other adapter copied. Written as moe-tune writes adapters
    /// (PEFTAdapter.save) into a new folder `outDir` (staged and renamed into place), with
    /// `baseModel` as its base. So merging the pruned adapter into the pruned model gives
    /// the pruned merge of the original adapter, value for value. Returns the modules written.
    public static func pruneAdapter(adapter: String, model: String, kept: [Int: [Int]], topK: Int?, outDir: String,
                                    baseModel: String) throws -> Int {
        let folder = try ModelFolderWriter(outDir: outDir, overwrite: false, inputs: [model, adapter], command: "prune")
        let c = try Checkpoint(directory: model).config, f = c.family
        let (n, k) = try check(c, kept: kept, topK: topK, path: model)
        let set = try PEFTAdapter.load(directory: adapter, shapes: ModuleShapes(config: c))
        defer { withExtendedLifetime(set) {} }
        var pc = c
        pc.numExperts = n
        pc.expertsPerToken = k
        // Each new adapter: its module, the old adapter, and the rows of B it keeps (nil: all).
        var moves: [(module: String, from: LoRAAdapter, rows: [Int]?)] = []
        for a in set.all {
            guard let (l, slot) = f.parse(module: a.module), let ids = kept[l] else {
                moves.append((a.module, a, nil))
                continue
            }
            switch slot {
            case .expert(let e, let part):
                guard let i = ids.firstIndex(of: e) else { continue }
                moves.append((f.module(.expert(i, part), layer: l), a, nil))
            case .router:
                moves.append((a.module, a, ids))
            default:
                moves.append((a.module, a, nil))
            }
        }
        let plan = moves.map { AdapterPlan(module: $0.module, rank: $0.from.rank, scale: $0.from.scale) }
        var spec = set.spec
        spec.expertSubsets = nil
        let routerLayers = (0..<c.numLayers).filter { $0 < set.routers.count && set.routers[$0] != nil }
        let out = try AdapterSet(shapes: ModuleShapes(config: pc), plan: plan, spec: spec, seed: 0, fullRouters: routerLayers,
                                 stackedRanks: true)
        for (new, move) in zip(out.all, moves) {
            let a = move.from
            new.a.update(from: a.a, count: a.rank * a.inFeatures)
            if let rows = move.rows {
                for (i, r) in rows.enumerated() { (new.b + i * a.rank).update(from: a.b + r * a.rank, count: a.rank) }
            } else {
                new.b.update(from: a.b, count: a.rank * a.outFeatures)
            }
        }
        for l in routerLayers {
            guard let old = set.routers[l], let new = out.routers[l], let ids = kept[l] else { continue }
            for (i, r) in ids.enumerated() { (new.weight + i * c.hiddenSize).update(from: old.weight + r * c.hiddenSize, count: c.hiddenSize) }
        }
        try folder.write { dir in try PEFTAdapter.save(out, family: f, baseModel: baseModel, to: dir) }
        return out.all.count + routerLayers.count
    }
}
