import MoEFormats
import MoEText
import MoECore
/// Several adapters applied at once with weights: sum_i w_i * s_i * B_i A_i on each module.
/// Exactly one low-rank adapter per module does this: A = [A_1; A_2; ...] (ranks stacked)
/// and B = [w_1 s_1 B_1, w_2 s_2 B_2, ...] with scale 1. A router trained in full replaces
/// the gate (two adapters that both replace one router are refused).
extension AdapterSet {
    public static func mix(_ parts: [(set: AdapterSet, weight: Float)], model: Transformer) throws -> AdapterSet {
        try mix(parts, shapes: ModuleShapes(model: model))
    }

    public static func mix(_ parts: [(set: AdapterSet, weight: Float)], shapes model: ModuleShapes) throws -> AdapterSet {
        if parts.count == 1, parts[0].weight == 1 { return parts[0].set }
        var modules: [String] = []
        var members: [String: [(LoRAAdapter, Float)]] = [:]
        for (set, w) in parts {
            for a in set.all {
                if members[a.module] == nil { modules.append(a.module) }
                members[a.module, default: []].append((a, w))
            }
        }
        var routerFrom: [Int: (TrainedRouter, Float)] = [:]
        for (set, w) in parts {
            for (l, r) in set.routers.enumerated() {
                guard let r else { continue }
                guard routerFrom[l] == nil else {
                    throw MoETuneError.invalid("two adapters replace the router of layer \(l); merge at most one fully trained router per layer")
                }
                routerFrom[l] = (r, w)
            }
        }
        let plan = modules.map { m in AdapterPlan(module: m, rank: members[m]!.reduce(0) { $0 + $1.0.rank }, scale: 1) }
        var spec = parts[0].set.spec
        spec.trainRouters = !routerFrom.isEmpty
        let mixed = try AdapterSet(shapes: model, plan: plan, spec: spec, seed: 0, fullRouters: routerFrom.keys.sorted(),
                                    stackedRanks: true)
        for target in mixed.all {
            var row = 0
            for (a, w) in members[target.module]! {
                // A rows row..<row+r;  B columns row..<row+r scaled by w * s.
                (target.a + row * target.inFeatures).update(from: a.a, count: a.rank * a.inFeatures)
                for o in 0..<target.outFeatures {
                    for j in 0..<a.rank {
                        let v = w * a.scale * a.b[o * a.rank + j]
                        // A weight of nan, inf or past the float range gave garbage silently.
                        guard v.isFinite else {
                            throw MoETuneError.invalid("adapter weight \(w) times the scale \(a.scale) of module \(Printable.quoted(target.module)) gives a non-finite value (\(v)); use a finite, smaller --weight")
                        }
                        target.b[o * target.rank + row + j] = v
                    }
                }
                row += a.rank
            }
        }
        for (l, (r, _)) in routerFrom {
            mixed.routers[l]!.weight.update(from: r.weight, count: r.experts * r.hidden)
        }
        return mixed
    }
}
