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
///
/// A checkpoint proves itself: `manifest.json` records the size and SHA-256 of every file it
/// holds and of the training data files it was made from. `restore` checks both before it
/// uses anything: a damaged file is refused naming it, and so is a data file that changed
/// since (unless the user accepts that: --accept-data-change).
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

    public static let manifestName = "manifest.json"
    public static let manifestFormat = "moe-tune-manifest-1"
    /// The files a checkpoint folder holds besides its manifest.
    public static let files = ["adapter_config.json", "adapter_model.safetensors", "config.yaml", "state.safetensors"]

    /// A file as a manifest records it.
    public struct FileIdentity: Equatable, Sendable {
        public var path: String
        public var size: Int
        public var sha256: String

        public static func of(_ path: String) throws -> FileIdentity {
            let (size, digest) = try SHA256.file(path)
            return FileIdentity(path: path, size: size, sha256: digest)
        }

        var json: [String: Any] { ["path": path, "size": size, "sha256": sha256] }

        init(path: String, size: Int, sha256: String) { (self.path, self.size, self.sha256) = (path, size, sha256) }

        init?(json: Any) {
            guard let o = json as? [String: Any], let p = o["path"] as? String, let n = o["size"] as? Int, let h = o["sha256"] as? String else { return nil }
            (path, size, sha256) = (p, n, h)
        }
    }

    /// The training data files of a run (each once), identified.
    public static func identify(data paths: [String]) throws -> [FileIdentity] {
        var seen = Set<String>()
        return try paths.filter { seen.insert($0).inserted }.map { try FileIdentity.of($0) }
    }

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
    public func write(outDir: String, adapters: AdapterSet, optimizer: Optimizer, family: ModelFamily, baseModel: String, keep: Int,
                      data: [FileIdentity] = []) throws -> String {
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
            // The manifest last: what every file holds, as written (read back from disk).
            let own = try TrainCheckpoint.files.map { name -> [String: Any] in
                var j = try FileIdentity.of(staging + "/" + name).json
                j["path"] = name
                return j
            }
            let manifest: [String: Any] = ["format": TrainCheckpoint.manifestFormat, "step": step, "files": own, "data": data.map(\.json)]
            try AtomicFile.write(try JSONSerialization.data(withJSONObject: manifest, options: [.prettyPrinted, .sortedKeys]),
                                 to: staging + "/" + TrainCheckpoint.manifestName)
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
    /// Checks the checkpoint at `path` against its manifest: every file it lists is there
    /// with its size and SHA-256. Returns the training data the checkpoint was made from, or
    /// nil for a checkpoint without a manifest (written before manifests existed).
    public static func verify(path: String) throws -> [FileIdentity]? {
        let mpath = path + "/" + manifestName
        guard let data = FileManager.default.contents(atPath: mpath) else {
            return FileManager.default.fileExists(atPath: mpath) ? [] : nil
        }
        guard let m = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], m["format"] as? String == manifestFormat,
              let files = (m["files"] as? [Any])?.compactMap(FileIdentity.init(json:)), let dataList = m["data"] as? [Any] else {
            throw MoETuneError.file(path: mpath, message: "is damaged (not a \(manifestFormat) manifest); remove \(path) to resume from the checkpoint before it, or start over")
        }
        guard Set(files.map(\.path)) == Set(TrainCheckpoint.files) else {
            throw MoETuneError.file(path: mpath, message: "lists \(files.map(\.path).sorted()), not the files of a checkpoint \(TrainCheckpoint.files); remove \(path) to resume from the checkpoint before it")
        }
        for f in files {
            let file = path + "/" + f.path
            guard FileManager.default.fileExists(atPath: file) else {
                throw MoETuneError.file(path: file, message: "is missing from the checkpoint; remove \(path) to resume from the checkpoint before it, or start over")
            }
            let now = try FileIdentity.of(file)
            guard now.size == f.size, now.sha256 == f.sha256 else {
                throw MoETuneError.file(path: file, message: "is damaged: "
                    + (now.size != f.size ? "\(now.size) bytes, the manifest says \(f.size)" : "its SHA-256 \(now.sha256.prefix(16))… differs from the manifest's \(f.sha256.prefix(16))…")
                    + "; remove \(path) to resume from the checkpoint before it, or start over")
            }
        }
        return dataList.compactMap(FileIdentity.init(json:))
    }

    /// How the training data differs from what a checkpoint was made from: one line a file.
    public static func dataChanges(recorded: [FileIdentity], now: [FileIdentity]) -> [(path: String, change: String)] {
        var out: [(String, String)] = []
        let current = Dictionary(now.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        for r in recorded {
            guard let n = current[r.path] else { out.append((r.path, "is no longer a training file")); continue }
            if n.size != r.size { out.append((r.path, "changed: \(r.size) bytes then, \(n.size) now")) }
            else if n.sha256 != r.sha256 { out.append((r.path, "changed: same size, SHA-256 \(r.sha256.prefix(16))… then, \(n.sha256.prefix(16))… now")) }
        }
        let old = Set(recorded.map(\.path))
        for n in now where !old.contains(n.path) { out.append((n.path, "is a training file the checkpoint was not made from")) }
        return out
    }

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
