import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

extension TrainConfig {
    /// `lora.experts`: expert-specialised fine-tuning (ESFT). With `select` (nil: `all`, every
    /// expert adapted as before) a scoring pass over the training data picks, per routed
    /// layer, the smallest set of experts whose scores reach `coverage` of the layer's
    /// total, and only their projections get LoRA.
    public struct ExpertsSection: Equatable, Sendable {
        public var select: ExpertScoreKind? = nil
        public var coverage = 0.2
        public init() {}

        static let choices = ["all"] + ExpertScoreKind.allCases.map(\.rawValue)

        /// Reads `lora.experts` from the lora section's reader; `targets` are lora.targets.
        package static func decode(_ lora: ConfigReader, targets: [ModuleKind]) throws -> ExpertsSection {
            var e = ExpertsSection()
            let r = try lora.section("experts")
            let s = try r.choice("select", choices, default: "all")
            e.select = ExpertScoreKind(rawValue: s)
            e.coverage = try r.double("coverage", default: e.coverage)
            try r.finish()
            guard e.coverage.isFinite, e.coverage > 0, e.coverage <= 1 else {
                throw r.fail("coverage", "must be in (0, 1], got \(e.coverage)")
            }
            if e.select != nil, !targets.contains(.mlp) {
                throw r.fail("select", "\(s) chooses which experts get LoRA, but lora.targets has no mlp (the experts' projections); add mlp or use select: all")
            }
            return e
        }

        /// The resolved config's line (empty for `all`, so such a config.yaml reads as before).
        package var yaml: String {
            guard let select else { return "" }
            return "\n  experts: {select: \(select.rawValue), coverage: \(coverage)}"
        }
    }
}
