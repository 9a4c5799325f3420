import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// How ESFT (DeepSeek's expert-specialised fine-tuning, 2024) scores an expert of a layer
/// over a data set's real tokens (every token of every example, scored by the loss or not;
/// padding never):
/// - `gate_score`: the mean over tokens of the expert's routing weight after the family's
///   top-k normalisation (the weight its output is multiplied by; 0 where not chosen);
/// - `token_share`: the share of the tokens' top-k slots the expert fills (sums to 1).
public enum ExpertScoreKind: String, CaseIterable, Sendable {
    case gateScore = "gate_score"
    case tokenShare = "token_share"
}

/// One routed layer's scores (one per expert) and the experts selected, in ascending id.
public struct ExpertLayerSelection: Equatable, Sendable {
    public var layer: Int
    public var scores: [Double]
    public var selected: [Int]
    public init(layer: Int, scores: [Double], selected: [Int]) { self.layer = layer; self.scores = scores; self.selected = selected }
}

/// The experts ESFT adapts: per routed layer, the smallest set of experts whose scores
/// reach `coverage` of the layer's total.
public struct ExpertSelection: Equatable, Sendable {
    public var select: ExpertScoreKind
    public var coverage: Double
    /// Real tokens routed per layer (every routed layer sees the same tokens).
    public var tokens: Int
    /// Routed layers only (a dense layer between MoE layers is left out).
    public var layers: [ExpertLayerSelection]

    /// Per layer, the experts to adapt (LoRASpec.expertSubsets).
    public var subsets: [Int: [Int]] {
        Dictionary(uniqueKeysWithValues: layers.map { ($0.layer, $0.selected) })
    }

    /// The scores of `kind` per routed layer from summed routing statistics.
    public static func scores(_ st: RoutingStatistics, kind: ExpertScoreKind) -> [(layer: Int, scores: [Double])] {
        (0..<st.layers).filter { st.tokens[$0] > 0 }.map { l in
            let n = Double(st.tokens[l]), e = st.experts
            let s: [Double] = (0..<e).map { j in
                switch kind {
                case .gateScore: return st.gateSum[l * e + j] / n
                case .tokenShare: return st.selected[l * e + j] / (n * Double(st.k))
                }
            }
            return (l, s)
        }
    }

    /// The smallest set whose scores reach `coverage` × the total: experts in descending
    /// score (ties: the lower id first) are taken while the running sum is below
    /// coverage × total, the total summed in that same order. Returned in ascending id.
    public static func select(scores: [Double], coverage: Double) -> [Int] {
        let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        let total = order.reduce(0.0) { $0 + scores[$1] }
        let target = coverage * total
        var sum = 0.0
        var chosen: [Int] = []
        for e in order {
            if sum >= target { break }
            chosen.append(e)
            sum += scores[e]
        }
        return chosen.sorted()
    }

    /// Refuses a coverage outside (0, 1].
    public static func checkCoverage(_ p: Double) throws {
        guard p.isFinite, p > 0, p <= 1 else {
            throw MoETuneError.invalid("coverage must be in (0, 1], got \(p)")
        }
    }

    public init(select: ExpertScoreKind, coverage: Double, tokens: Int, layers: [ExpertLayerSelection]) {
        self.select = select; self.coverage = coverage; self.tokens = tokens; self.layers = layers
    }

    /// Scores and selects from summed routing statistics.
    public init(statistics st: RoutingStatistics, select: ExpertScoreKind, coverage: Double) {
        self.select = select
        self.coverage = coverage
        let scored = Self.scores(st, kind: select)
        tokens = scored.first.map { st.tokens[$0.layer] } ?? 0
        layers = scored.map { ExpertLayerSelection(layer: $0.layer, scores: $0.scores,
                                                   selected: Self.select(scores: $0.scores, coverage: coverage)) }
    }

    /// One forward pass over every example (no backward state, no adapters, no noise or
    /// jitter), in batches of similar length, then the selection.
    public static func compute(model: Transformer, dataset: Dataset, batchSize: Int, select: ExpertScoreKind,
                               coverage: Double, progress: ((Int, Int) -> Void)? = nil) throws -> ExpertSelection {
        guard model.config.isMoE else {
            throw MoETuneError.invalid("expert selection needs a Mixture-of-Experts model; \(model.config.family.name) models have no experts")
        }
        try checkCoverage(coverage)
        guard !dataset.examples.isEmpty else { throw MoETuneError.invalid("expert selection needs at least one example") }
        let r = try Evaluator.evaluate(model: model, dataset: dataset, batchSize: batchSize, progress: progress)
        guard let routing = r.routing else { throw MoETuneError.invalid("the model routed no tokens") }
        let selection = ExpertSelection(statistics: routing, select: select, coverage: coverage)
        if let bad = selection.layers.first(where: { !$0.scores.allSatisfy(\.isFinite) }) {
            throw MoETuneError.invalid("layer \(bad.layer): the routing weights are not finite (NaN or infinite weights in the model?)")
        }
        return selection
    }
}
