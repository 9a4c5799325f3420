import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// How an expert's saliency is measured for pruning, over a calibration set's real tokens
/// (every token of every example; padding never):
/// - `reap`: Cerebras' REAP (router-weighted expert activation pruning, 2025): the mean over
///   the tokens routed to the expert of its routing weight times the L2 norm of its output
///   (before the weight). The weight is the one the family multiplies the output by, after
///   its top-k normalisation (REAP's `renormalize_router_weights`, on by default where the
///   model renormalises), without DeepSeek-V2's constant routed_scaling_factor; an expert no
///   token reached scores 0;
/// - `frequency`: the share of the tokens' top-k slots the expert fills;
/// - `random`: a uniform draw per expert from `seed` and the layer (no data needed).
public enum PruneMethod: String, CaseIterable, Sendable {
    case reap, frequency, random
}

/// One routed layer: a saliency per expert and the experts kept, in ascending id.
public struct PrunedLayer: Equatable, Sendable {
    public var layer: Int
    public var saliency: [Double]
    public var kept: [Int]
    public init(layer: Int, saliency: [Double], kept: [Int]) { self.layer = layer; self.saliency = saliency; self.kept = kept }
}

/// Which experts each routed layer keeps after pruning.
public struct PrunePlan: Equatable, Sendable {
    public var method: PruneMethod
    public var seed: UInt64
    /// Experts per layer before and after.
    public var experts: Int
    public var keep: Int
    /// Real tokens of the calibration pass (0 for `random`).
    public var tokens: Int
    public var layers: [PrunedLayer]

    /// Per routed layer, the experts kept (ascending).
    public var kept: [Int: [Int]] { Dictionary(uniqueKeysWithValues: layers.map { ($0.layer, $0.kept) }) }

    public init(method: PruneMethod, seed: UInt64, experts: Int, keep: Int, tokens: Int, layers: [PrunedLayer]) {
        self.method = method; self.seed = seed; self.experts = experts; self.keep = keep; self.tokens = tokens; self.layers = layers
    }

    /// The experts to keep: `keep` in (0, 1) is a fraction of `experts` (as REAP counts it:
    /// floor(experts x (1 - keep)) are dropped), a whole number >= 1 a count.
    public static func keepCount(_ keep: Double, experts: Int) throws -> Int {
        guard keep.isFinite, keep > 0 else { throw MoETuneError.invalid("--keep must be a fraction in (0, 1) or a count of experts, got \(keep)") }
        let n: Int
        if keep < 1 {
            n = experts - Int((Double(experts) * (1 - keep) + 1e-9).rounded(.down))
        } else {
            guard keep == keep.rounded(), keep <= Double(experts) else {
                throw MoETuneError.invalid("--keep \(keep): a count must be a whole number of experts between 1 and \(experts)")
            }
            n = Int(keep)
        }
        guard n >= 1 else { throw MoETuneError.invalid("--keep \(keep) keeps no expert of \(experts)") }
        return n
    }

    /// The `count` experts of highest saliency (ties: the lower id first), in ascending id.
    public static func keepHighest(_ saliency: [Double], count: Int) -> [Int] {
        let order = saliency.indices.sorted { saliency[$0] != saliency[$1] ? saliency[$0] > saliency[$1] : $0 < $1 }
        return Array(order.prefix(count)).sorted()
    }

    /// The saliencies of `method` per routed layer from summed routing statistics.
    public static func saliency(_ st: RoutingStatistics, method: PruneMethod, seed: UInt64) -> [(layer: Int, saliency: [Double])] {
        (0..<st.layers).filter { st.tokens[$0] > 0 }.map { l in
            let e = st.experts
            let s: [Double] = (0..<e).map { j in
                let count = st.selected[l * e + j]
                switch method {
                case .reap: return count > 0 ? st.outputNormSum[l * e + j] / count : 0
                case .frequency: return count / (Double(st.tokens[l]) * Double(st.k))
                case .random: return randomSaliency(seed: seed, layer: l, experts: e)[j]
                }
            }
            return (l, s)
        }
    }

    /// Uniform [0, 1) draws, one per expert, from the seed and the layer.
    public static func randomSaliency(seed: UInt64, layer: Int, experts: Int) -> [Double] {
        var rng = SplitMix64(seed: mixBits(seed ^ (UInt64(layer) &+ 1) &* 0x9E37_79B9_7F4A_7C15))
        return (0..<experts).map { _ in Double(rng.next() >> 11) * 0x1.0p-53 }
    }

    /// Scores every expert (one forward pass over the calibration set unless `random`) and
    /// keeps the `keep` most salient per routed layer.
    /// With `adapters`, the experts are scored on the adapted model (the one being pruned).
    public static func compute(model: Transformer, adapters: AdapterSet? = nil, dataset: Dataset?, batchSize: Int, method: PruneMethod,
                               keep: Int, seed: UInt64, progress: ((Int, Int) -> Void)? = nil) throws -> PrunePlan {
        let c = model.config
        guard c.isMoE else {
            throw MoETuneError.invalid("pruning needs a Mixture-of-Experts model; \(c.family.name) models have no experts")
        }
        guard (1...c.numExperts).contains(keep) else {
            throw MoETuneError.invalid("cannot keep \(keep) of \(c.numExperts) experts")
        }
        if method == .random {
            let layers = (0..<c.numLayers).filter(c.isMoELayer).map { l in
                let s = randomSaliency(seed: seed, layer: l, experts: c.numExperts)
                return PrunedLayer(layer: l, saliency: s, kept: keepHighest(s, count: keep))
            }
            return PrunePlan(method: method, seed: seed, experts: c.numExperts, keep: keep, tokens: 0, layers: layers)
        }
        guard let dataset, !dataset.examples.isEmpty else {
            throw MoETuneError.invalid("\(method.rawValue) pruning needs calibration data with at least one example (--data)")
        }
        let saved = model.moe
        model.moe.expertOutputNorms = method == .reap
        defer { model.moe = saved }
        let r = try Evaluator.evaluate(model: model, adapters: adapters, dataset: dataset, batchSize: batchSize, progress: progress)
        guard let routing = r.routing else { throw MoETuneError.invalid("the model routed no tokens") }
        let scored = saliency(routing, method: method, seed: seed)
        if let bad = scored.first(where: { !$0.saliency.allSatisfy(\.isFinite) }) {
            throw MoETuneError.invalid("layer \(bad.layer): the saliencies are not finite (NaN or infinite weights in the model?)")
        }
        let layers = scored.map { PrunedLayer(layer: $0.layer, saliency: $0.saliency, kept: keepHighest($0.saliency, count: keep)) }
        return PrunePlan(method: method, seed: seed, experts: c.numExperts, keep: keep,
                         tokens: scored.first.map { routing.tokens[$0.layer] } ?? 0, layers: layers)
    }
}
