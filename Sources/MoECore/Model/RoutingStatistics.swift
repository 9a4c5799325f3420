import MoEFormats
import MoEText
/// Per-layer routing statistics of forward passes over valid (non-padding) tokens:
/// assignments chosen per expert, assignments dropped by the capacity, and sums of the
/// router probabilities, router entropy and squared logsumexp. Filled by each forward
/// pass (`record`), and summed over many batches for reports (`add`).
public final class RoutingStatistics: @unchecked Sendable {
    public let layers: Int
    public let experts: Int
    public let k: Int
    public private(set) var tokens: [Int]        // [L] valid tokens routed
    public private(set) var selected: [Double]   // [L * E] assignments chosen per expert
    public private(set) var dropped: [Int]       // [L]
    public private(set) var probSum: [Double]    // [L * E]
    /// Final routing weights (after the family's top-k normalisation) summed per expert [L * E].
    public private(set) var gateSum: [Double]
    /// Sums over the routed tokens of each expert's routing weight x the L2 norm of its output
    /// (REAP; only with MoEOptions.expertOutputNorms, else 0) [L * E].
    public private(set) var outputNormSum: [Double]
    public private(set) var entropySum: [Double] // [L]
    public private(set) var zSum: [Double]       // [L]
    /// Auxiliary loss values summed over the recorded forward passes, and how many.
    public private(set) var auxLossSum = 0.0
    public private(set) var zLossSum = 0.0
    public private(set) var passes = 0

    public init(layers: Int, experts: Int, k: Int) {
        self.layers = layers; self.experts = experts; self.k = k
        tokens = Array(repeating: 0, count: layers)
        selected = Array(repeating: 0, count: layers * experts)
        dropped = Array(repeating: 0, count: layers)
        probSum = Array(repeating: 0, count: layers * experts)
        gateSum = Array(repeating: 0, count: layers * experts)
        outputNormSum = Array(repeating: 0, count: layers * experts)
        entropySum = Array(repeating: 0, count: layers)
        zSum = Array(repeating: 0, count: layers)
    }

    public func reset() {
        for i in tokens.indices { tokens[i] = 0; dropped[i] = 0; entropySum[i] = 0; zSum[i] = 0 }
        for i in selected.indices { selected[i] = 0; probSum[i] = 0; gateSum[i] = 0; outputNormSum[i] = 0 }
        auxLossSum = 0; zLossSum = 0; passes = 0
    }

    /// Overwrites layer l with the routing just done.
    package func record(layer l: Int, from r: RoutingBuffers) {
        tokens[l] = r.validTokens
        dropped[l] = r.dropped
        entropySum[l] = r.entropySum
        zSum[l] = r.zSum
        for j in 0..<experts {
            selected[l * experts + j] = Double(r.selected[j])
            probSum[l * experts + j] = r.probSum[j]
            gateSum[l * experts + j] = r.gateSum[j]
            outputNormSum[l * experts + j] = r.outputNormSum[j]
        }
    }

    /// Adds another pass's statistics (for evaluation over a whole data set).
    public func add(_ o: RoutingStatistics, auxLoss: Double, zLoss: Double) {
        for i in tokens.indices {
            tokens[i] += o.tokens[i]; dropped[i] += o.dropped[i]
            entropySum[i] += o.entropySum[i]; zSum[i] += o.zSum[i]
        }
        for i in selected.indices { selected[i] += o.selected[i]; probSum[i] += o.probSum[i]; gateSum[i] += o.gateSum[i]
            outputNormSum[i] += o.outputNormSum[i]
        }
        auxLossSum += auxLoss; zLossSum += zLoss; passes += 1
    }

    /// Every sum as one array (to be summed over data-parallel ranks), and back.
    public func flattened() -> [Double] {
        tokens.map(Double.init) + selected + dropped.map(Double.init) + probSum + entropySum + zSum + gateSum + outputNormSum
            + [auxLossSum, zLossSum, Double(passes)]
    }

    public func load(flattened v: [Double]) {
        precondition(v.count == flattened().count, "routing statistics of another shape")
        var i = 0
        func take(_ n: Int) -> ArraySlice<Double> { defer { i += n }; return v[i..<(i + n)] }
        tokens = take(layers).map { Int($0.rounded()) }
        selected = Array(take(layers * experts))
        dropped = take(layers).map { Int($0.rounded()) }
        probSum = Array(take(layers * experts))
        entropySum = Array(take(layers))
        zSum = Array(take(layers))
        gateSum = Array(take(layers * experts))
        outputNormSum = Array(take(layers * experts))
        auxLossSum = v[i]; zLossSum = v[i + 1]; passes = Int(v[i + 2].rounded())
    }

    /// Share of the layer's assignments that went to each expert [E] (sums to 1).
    public func fractions(layer l: Int) -> [Double] {
        let total = Double(tokens[l] * k)
        return (0..<experts).map { total > 0 ? selected[l * experts + $0] / total : 0 }
    }

    /// max / mean load, and the coefficient of variation (std / mean) of the loads.
    public func balance(layer l: Int) -> (maxOverMean: Double, cv: Double) {
        let f = fractions(layer: l)
        let mean = 1 / Double(experts)
        guard f.reduce(0, +) > 0 else { return (0, 0) }
        let variance = f.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(experts)
        return ((f.max() ?? 0) / mean, variance.squareRoot() / mean)
    }

    public func entropy(layer l: Int) -> Double { tokens[l] > 0 ? entropySum[l] / Double(tokens[l]) : 0 }

    public func droppedFraction(layer l: Int) -> Double {
        tokens[l] > 0 ? Double(dropped[l]) / Double(tokens[l] * k) : 0
    }

    /// Mean coefficient of variation over layers: one number for "how balanced".
    /// Mean over the layers that routed tokens (a dense layer between MoE layers routes none).
    public var meanCV: Double {
        let routed = (0..<layers).filter { tokens[$0] > 0 }
        return routed.reduce(0) { $0 + balance(layer: $1).cv } / Double(max(routed.count, 1))
    }

    /// A JSON-ready summary per layer.
    public func summary() -> [String: Any] {
        var layersOut: [[String: Any]] = []
        for l in 0..<layers {
            let b = balance(layer: l)
            layersOut.append(["layer": l, "fractions": fractions(layer: l), "max_over_mean": b.maxOverMean,
                              "cv": b.cv, "entropy": entropy(layer: l), "dropped_fraction": droppedFraction(layer: l)])
        }
        var out: [String: Any] = ["layers": layersOut, "mean_cv": meanCV]
        if passes > 0 {
            out["aux_loss"] = auxLossSum / Double(passes)
            out["z_loss"] = zLossSum / Double(passes)
        }
        return out
    }
}
