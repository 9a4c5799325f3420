import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

extension Trainer {
    /// The run's LoRA spec. With `lora.experts.select` other than `all`, a scoring pass over
    /// the training examples (forward only, no adapters, no noise or jitter) chooses the
    /// experts of each routed layer first (ExpertSelection); only they get LoRA on their
    /// projections, and the selection goes to out_dir/experts.json (rank 0). With `all`,
    /// the spec is the config's as it always was.
    func resolvedLoRASpec(_ c: TrainConfig, model: Transformer, train: Dataset, outDir: String, root: Bool,
                          events: TrainerEvents) throws -> LoRASpec {
        var spec = c.loraSpec
        guard let select = c.lora.experts.select else { return spec }
        guard model.config.isMoE else {
            throw MoETuneError.config(path: configPath, key: "lora.experts.select",
                                      message: "\(select.rawValue) selects experts, but \(model.config.family.name) models have none; use select: all")
        }
        let start = Date()
        model.moe.training = false
        let selection = try ExpertSelection.compute(model: model, dataset: train, batchSize: c.training.batchSize,
                                                    select: select, coverage: c.lora.experts.coverage)
        spec.expertSubsets = selection.subsets
        let chosen = selection.layers.reduce(0) { $0 + $1.selected.count }
        events.log("experts: \(select.rawValue) over \(selection.tokens) tokens, coverage \(c.lora.experts.coverage): "
            + "\(chosen) of \(selection.layers.count * model.config.numExperts) experts of \(selection.layers.count) routed layers get LoRA"
            + String(format: " (%.1f s); the selection is in experts.json", Date().timeIntervalSince(start)))
        if root { try AtomicFile.write(try selection.jsonData(), to: (outDir as NSString).appendingPathComponent("experts.json")) }
        return spec
    }
}
