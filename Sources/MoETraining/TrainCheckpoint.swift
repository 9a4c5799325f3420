import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// A resumable point of a training run: `out_dir/checkpoints/step-N/` holds the PEFT
/// adapter, `state.safetensors` (every trainable parameter, the optimizer's state and, in
/// its metadata, the step, the optimizer's step count, the position in the micro-batch
/// plan and the config hash) and `config.yaml` (the resolved config, to name what changed).
///
/// What the state needs and why it is small: the data order is a pure function of
/// (seed, epoch) and the position is the micro-batch index; the learning rate a pure
/// function of the step; every random stream (LoRA dropout masks, MoE jitter and router
/// noise) is keyed by (seed, micro-batch index). So the micro-batch index restores all of
/// them and no generator state needs saving.
///
/// The folder is written under a temporary name and renamed into place, every file fsynced,
/// so `step-N` exists complete or not at all; older checkpoints beyond `keep` are removed
/// only after the new one is in place.
public struct TrainCheckpoint {
    public static let format = "moe-tune-checkpoint-1"

    public var step: Int
    public var microIndex: Int
    public var optimizerStep: Int
    public var trainedTokens: Int
    public var elapsed: Double
    public var firstValidLoss: Double?
    public var lastValidLoss: Double?
    public var configHash: String
    public var configYAML: String

    public static func folder(_ outDir: String) -> String { outDir + "/checkpoints" }

    /// The complete checkpoints in out_dir, oldest first, as (step, path).
    public static func list(outDir: String) -> [(step: Int, path: String)] {
        let dir = folder(outDir)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("step-"), let n = Int(name.dropFirst(5)),
                  FileManager.default.fileExists(atPath: dir + "/" + name + "/state.safetensors") else { return nil }
            return (n, dir + "/" + name)
        }.sorted { $0.0 < $1.0 }
    }

    /// Writes the checkpoint of `adapters` and `optimizer` into out_dir, then keeps the last `keep`.
    @discardableResult
    public func write(outDir: String, adapters: AdapterSet, optimizer: Optimizer, family: ModelFamily, baseModel: String, keep: Int) throws -> String {
        let fm = FileManager.default
        let dir = TrainCheckpoint.folder(outDir)
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let final = dir + "/step-\(step)"
        let staging = AtomicFile.temporaryPath(for: final)
        try? fm.removeItem(atPath: staging)
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        do {
            try PEFTAdapter.save(adapters, family: family, baseModel: baseModel, to: staging)
            var w = SafeTensorsWriter()
            w.add(.init(name: "params", shape: [adapters.store.count],
                        floats: UnsafeBufferPointer(start: adapters.store.params.pointer, count: adapters.store.count)))
            for (name, buf) in optimizer.stateBuffers {
                w.add(.init(name: name, shape: [buf.count], floats: UnsafeBufferPointer(start: buf.pointer, count: buf.count)))
            }
            w.metadata = [
                "format": TrainCheckpoint.format, "step": "\(step)", "micro_index": "\(microIndex)",
                "optimizer_step": "\(optimizerStep)", "trained_tokens": "\(trainedTokens)", "elapsed_s": "\(elapsed)",
                "config_hash": configHash,
            ]
            if let firstValidLoss { w.metadata["first_valid_loss"] = "\(firstValidLoss)" }
            if let lastValidLoss { w.metadata["last_valid_loss"] = "\(lastValidLoss)" }
            try w.write(to: staging + "/state.safetensors")
            try AtomicFile.write(Data(configYAML.utf8), to: staging + "/config.yaml")
            if fm.fileExists(atPath: final) { try fm.removeItem(atPath: final) }
            guard rename(staging, final) == 0 else {
                throw MoETuneError.file(path: final, message: "cannot move the checkpoint into place: \(String(cString: strerror(errno)))")
            }
            AtomicFile.syncDirectory(of: final)
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
        for old in TrainCheckpoint.list(outDir: outDir).dropLast(max(keep, 1)) {
            try? fm.removeItem(atPath: old.path)
        }
        return final
    }

    /// Reads the checkpoint at `path`, lets `check` refuse it (a changed config), then loads
    /// its parameters and optimizer state into `adapters` and `optimizer` (which must have
    /// the shapes the checkpoint was written with).
    public static func restore(path: String, adapters: AdapterSet, optimizer: Optimizer,
                               check: (TrainCheckpoint) throws -> Void = { _ in }) throws -> TrainCheckpoint {
        let statePath = path + "/state.safetensors"
        let file = try SafeTensorsFile(path: statePath)
        let md = file.metadata
        guard md["format"] == format else {
            throw MoETuneError.file(path: statePath, message: "not a moe-tune checkpoint (format \(md["format"] ?? "missing"), expected \(format))")
        }
        func int(_ key: String) throws -> Int {
            guard let v = md[key].flatMap(Int.init), v >= 0 else {
                throw MoETuneError.file(path: statePath, message: "metadata \(key) is missing or not a count")
            }
            return v
        }
        func load(_ name: String, into buf: FloatBuffer) throws {
            guard let info = file.tensors[name] else { throw MoETuneError.file(path: statePath, message: "\(name) is missing") }
            guard info.dtype == .f32, info.shape == [buf.count], info.byteCount == buf.count * 4 else {
                throw MoETuneError.file(path: statePath, message: "\(name) has shape \(info.shape) \(info.dtype.rawValue), the run has [\(buf.count)] F32 (a different adapter layout)")
            }
            let bytes = file.bytes(of: info)
            UnsafeMutableRawPointer(buf.pointer).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        }
        guard let yaml = FileManager.default.contents(atPath: path + "/config.yaml") else {
            throw MoETuneError.file(path: path + "/config.yaml", message: "missing from the checkpoint")
        }
        let ck = TrainCheckpoint(step: try int("step"), microIndex: try int("micro_index"), optimizerStep: try int("optimizer_step"),
                                 trainedTokens: try int("trained_tokens"), elapsed: md["elapsed_s"].flatMap(Double.init) ?? 0,
                                 firstValidLoss: md["first_valid_loss"].flatMap(Double.init),
                                 lastValidLoss: md["last_valid_loss"].flatMap(Double.init),
                                 configHash: md["config_hash"] ?? "", configYAML: String(decoding: yaml, as: UTF8.self))
        try check(ck)
        try load("params", into: adapters.store.params)
        let expected = Set(optimizer.stateBuffers.keys)
        let present = Set(file.tensors.keys).subtracting(["params"])
        guard expected == present else {
            throw MoETuneError.file(path: statePath, message: "holds optimizer state \(present.sorted()), the run needs \(expected.sorted())")
        }
        for (name, buf) in optimizer.stateBuffers { try load(name, into: buf) }
        optimizer.t = ck.optimizerStep
        return ck
    }
}
