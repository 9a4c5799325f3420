import MoEFormats
import MoEText

/// Expert-specialised fine-tuning (ESFT): LoRA on the projections of some experts only.
extension LoRASpec {
    /// Whether `module` gets an adapter under `expertSubsets`: every module that is not a
    /// routed expert's projection does; an expert's only when its layer's subset holds it.
    package func adapts(module: String, family: ModelFamily) -> Bool {
        guard let subsets = expertSubsets else { return true }
        guard let (layer, slot) = family.parse(module: module), case .expert(let e, _) = slot else { return true }
        return subsets[layer]?.contains(e) ?? false
    }
}
