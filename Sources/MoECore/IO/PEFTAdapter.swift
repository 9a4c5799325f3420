import Foundation
import MoEFormats
import MoEText

/// LoRA adapters in the Hugging Face PEFT format: a folder with adapter_config.json and
/// adapter_model.safetensors, keys "base_model.model." + module + ".lora_A.weight" [r, in]
/// and ".lora_B.weight" [out, r]; module names come from the model's family. MoE families
/// write transformers 5's fused layout (`target_parameters`, see `save`); reading takes that,
/// peft's own fused adapters and the per-expert names moe-tune wrote before.
public enum PEFTAdapter {
    package static let prefix = "base_model.model."

    /// A JSON true/false (not `is Bool`: on Linux an NSNumber 1 or 0 also casts to Bool).
    package static func isJSONBool(_ v: Any?) -> Bool { (v as? NSNumber).map(CFGetTypeIDIsBool) ?? false }

    /// Writes `adapters` to `dir` (created if needed). Files appear atomically.
    /// Attention and head adapters go in `target_modules` (suffixes). In a family whose
    /// block says `peftFusedLayout` (transformers 5's fused experts), the rest are
    /// `target_parameters`: each layer's experts as peft's ParamWrapper on the 3-D
    /// `experts.gate_up_proj` / `experts.down_proj` (gate and up as one block-diagonal LoRA
    /// of twice the rank, `rank_pattern`/`alpha_pattern` keeping every expert's scale), and
    /// the router, shared-expert and dense-MLP adapters on their 2-D weights (peft 0.21 wraps
    /// neither a router that is not a Linear nor, there, a `gate_proj` target that is not an expert).
    /// Steps: savedLayout (the tensors), savedConfig (adapter_config.json), in PEFTAdapterWriter.swift.
    public static func save(_ adapters: AdapterSet, family: ModelFamily, baseModel: String, to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let layout = try savedLayout(adapters, family: family)
        var writer = SafeTensorsWriter()
        for t in layout.tensors { writer.add(t) }
        let config = savedConfig(adapters, layout: layout, family: family, baseModel: baseModel)
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try writer.write(to: dir + "/adapter_model.safetensors")
        try AtomicFile.write(json, to: dir + "/adapter_config.json")
    }

    /// Reads the adapter in `dir` for `model`. Ranks come from the tensors, scales from
    /// lora_alpha (or alpha_pattern) and use_rslora.
    public static func load(directory dir: String, model: Transformer) throws -> AdapterSet {
        try load(directory: dir, shapes: ModuleShapes(model: model))
    }

    /// The same against the module shapes alone (merge: no weights loaded).
    /// Steps (PEFTAdapterReader.swift): readConfig, readPieces (fused experts split per
    /// expert), readRouterWeights, checkTargetModules, orderedPieces, adapterSet.
    public static func load(directory dir: String, shapes model: ModuleShapes) throws -> AdapterSet {
        let config = try readConfig(directory: dir)
        let weightsPath = dir + "/adapter_model.safetensors"
        let file = try SafeTensorsFile(path: weightsPath)
        let pieces = try readPieces(file, config: config, shapes: model)
        let routerWeights = try readRouterWeights(file, config: config, shapes: model)
        guard !pieces.isEmpty || !routerWeights.isEmpty else {
            throw MoETuneError.file(path: weightsPath, message: "no LoRA tensors (*.lora_A.weight) found")
        }
        try checkTargetModules(file, config: config)
        return try adapterSet(try orderedPieces(pieces, path: weightsPath), routers: routerWeights, config: config,
                              shapes: model, path: weightsPath)
    }
}
