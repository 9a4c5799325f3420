import Foundation
import MoEFormats
import MoEText

/// A Hugging Face model folder: config.json plus model.safetensors, or shards listed in
/// model.safetensors.index.json. Files are memory-mapped; an aligned F32 tensor is
/// used in place, other dtypes are converted to fp32 once (so nothing is copied twice).
/// A path ending in `.gguf` opens a GGUF model file instead (IO/GGUF/GGUFModelFile.swift):
/// the same tensors under their Hugging Face names.
public final class Checkpoint: @unchecked Sendable {
    public let directory: String
    public let config: ModelConfig
    private let files: [SafeTensorsFile]
    private let location: [String: (file: Int, info: TensorInfo)]
    private var converted: [FloatBuffer] = []
    /// The GGUF file behind this checkpoint, if it is one.
    package let gguf: GGUFModelFile?

    /// Testing hook: told of every weight read as fp32, with its element count: `kept` for
    /// reads that stay for the checkpoint's lifetime (`floats`, `mxfp4Floats`: loading a
    /// model), otherwise +count when a temporary view starts and -count when it ends. Lets a
    /// test prove that merge holds one tensor at a time and never loads the model.
    nonisolated(unsafe) public static var readHook: ((_ name: String, _ count: Int, _ kept: Bool) -> Void)?

    /// Whether `path` names a GGUF model file rather than a folder.
    public static func isGGUF(_ path: String) -> Bool { GGUFFile.isGGUFPath(path) }

    public init(directory: String) throws {
        if GGUFFile.isGGUFPath(directory) {
            let g = try GGUFModelFile(path: directory)
            self.directory = directory
            config = g.config
            gguf = g
            files = []
            location = [:]
            return
        }
        gguf = nil
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw MoETuneError.file(path: directory, message: "model folder not found")
        }
        self.directory = directory
        config = try ModelConfig.load(directory: directory)
        let single = (directory as NSString).appendingPathComponent("model.safetensors")
        let indexPath = (directory as NSString).appendingPathComponent("model.safetensors.index.json")
        var fileNames: [String] = []
        var expected: [String: String] = [:]
        if FileManager.default.fileExists(atPath: indexPath) {
            guard let data = FileManager.default.contents(atPath: indexPath),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = obj["weight_map"] as? [String: String]
            else { throw MoETuneError.file(path: indexPath, message: "not a safetensors index (no weight_map object)") }
            // A shard is a file of this folder: a path ("../x", "/abs", "sub/x") would read
            // weights from elsewhere, which transformers' loader does not do either.
            for (tname, file) in map where file.isEmpty || file.contains("/") || file.contains("\\") || file == "." || file == ".." {
                throw MoETuneError.file(path: indexPath, message: "tensor \(Printable.quoted(tname)) is mapped to \(Printable.quoted(file)), which is not a file name in the model folder")
            }
            expected = map
            fileNames = Array(Set(map.values)).sorted()
        } else if FileManager.default.fileExists(atPath: single) {
            fileNames = ["model.safetensors"]
        } else {
            throw MoETuneError.file(path: directory, message: "no model.safetensors or model.safetensors.index.json")
        }
        var files: [SafeTensorsFile] = []
        var location: [String: (file: Int, info: TensorInfo)] = [:]
        for name in fileNames {
            let path = (directory as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: path) else {
                throw MoETuneError.file(path: indexPath, message: "shard \(name) is listed but missing")
            }
            let f = try SafeTensorsFile(path: path)
            for (tname, info) in f.tensors {
                if let other = location[tname] {
                    throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(tname)) is also stored in \(fileNames.count > 1 ? files[other.file].path : path)")
                }
                // A layer the config does not have would be ignored silently: refuse it.
                if tname.hasPrefix("model.layers."), let l = Int(tname.dropFirst("model.layers.".count).prefix { $0.isNumber }),
                   l >= config.numLayers {
                    throw MoETuneError.file(path: path, message: "tensor \(Printable.quoted(tname)) belongs to layer \(l), but config.json has num_hidden_layers \(config.numLayers)")
                }
                location[tname] = (files.count, info)
            }
            files.append(f)
        }
        for (tname, file) in expected {
            guard let at = location[tname] else {
                throw MoETuneError.file(path: indexPath, message: "tensor \(Printable.quoted(tname)) is listed in \(file) but not stored there")
            }
            // The index is what transformers loads by: a tensor found in another shard than
            // the one it names would load here and fail there.
            if fileNames[at.file] != file {
                throw MoETuneError.file(path: indexPath, message: "tensor \(Printable.quoted(tname)) is listed in \(file) but stored in \(fileNames[at.file])")
            }
        }
        self.files = files
        self.location = location
    }

    public var tensorNames: [String] { gguf?.tensorNames ?? Array(location.keys) }

    public func contains(_ name: String) -> Bool { gguf?.contains(name) ?? (location[name] != nil) }

    /// The tensor's entry; a GGUF tensor is described as the F32 tensor it dequantizes to.
    public func info(_ name: String) -> TensorInfo? {
        if let g = gguf {
            return g.shape(name).map { TensorInfo(name: name, dtype: .f32, shape: $0, offset: 0, byteCount: 4 * $0.reduce(1, *)) }
        }
        return location[name]?.info
    }

    /// A copy of the stored bytes of `name` (safetensors), from the file mapped when the
    /// checkpoint was opened (no header parsed again); its mapped pages are released after.
    package func storedBytes(_ name: String) -> Data? {
        guard let (i, info) = location[name] else { return nil }
        defer { files[i].release(info) }
        return files[i].bytesCopy(info)
    }

    /// The file holding `name`, for error messages.
    public func path(of name: String) -> String {
        location[name].map { files[$0.file].path } ?? directory
    }

    /// An fp32 view of tensor `name`, checked against `shape`. Valid while this
    /// checkpoint lives.
    public func floats(_ name: String, shape: [Int]) throws -> UnsafePointer<Float> {
        Self.readHook?(name, shape.reduce(1, *), true)
        if let g = gguf {
            let buffer = FloatBuffer(count: shape.reduce(1, *), zeroed: false)
            try g.dequantize(name, shape: shape, into: buffer.pointer)
            converted.append(buffer)
            return UnsafePointer(buffer.pointer)
        }
        guard let (fileIndex, info) = location[name] else {
            throw MoETuneError.file(path: directory, message: "tensor \(Printable.quoted(name)) not found in the checkpoint")
        }
        let file = files[fileIndex]
        guard info.shape == shape else {
            throw MoETuneError.file(path: file.path,
                message: "tensor \(Printable.quoted(name)) has shape \(info.shape), expected \(shape) from config.json")
        }
        let bytes = file.bytes(of: info)
        if info.dtype == .f32, Int(bitPattern: bytes.baseAddress) % MemoryLayout<Float>.alignment == 0 {
            return bytes.baseAddress!.assumingMemoryBound(to: Float.self)
        }
        let buffer = FloatBuffer(count: info.count, zeroed: false)
        guard FloatConversion.toFloat(bytes.baseAddress!, dtype: info.dtype, count: info.count, into: buffer.pointer) else {
            throw MoETuneError.file(path: file.path,
                message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); model weights must be F32, F16 or BF16")
        }
        file.release(info)
        converted.append(buffer)
        return UnsafePointer(buffer.pointer)
    }

    /// Tensor `name` stored as MXFP4 (`name`_blocks / `name`_scales, GPT-OSS's experts),
    /// dequantized to fp32 [E, G*32, R] (IO/MXFP4.swift) and kept with the checkpoint;
    /// nil when the checkpoint holds no `name`_blocks.
    public func mxfp4Floats(_ name: String, shape: [Int]) throws -> UnsafePointer<Float>? {
        if contains(name + "_blocks") { Self.readHook?(name, shape.reduce(1, *), true) }
        return try withTemporaryMXFP4Floats(name, shape: shape) { p in
            let buffer = FloatBuffer(count: shape.reduce(1, *), zeroed: false)
            buffer.pointer.update(from: p, count: buffer.count)
            converted.append(buffer)
            return UnsafePointer(buffer.pointer)
        }
    }

    /// Refuses expert tensor `name` of `module` when its storage disagrees with config.json's
    /// quantization_config, naming the tensor: MXFP4 blocks without an mxfp4
    /// quantization_config, blocks for a module modules_to_not_convert exempts, or a plain
    /// tensor where the config says MXFP4 (transformers would look for its blocks).
    public func checkMXFP4Storage(_ name: String, module: String) throws {
        let blocks = contains(name + "_blocks"), plain = contains(name)
        guard blocks || plain else { return }
        let cfgPath = "config.json (quantization_config)"
        guard let q = config.mxfp4 else {
            if blocks {
                throw MoETuneError.file(path: path(of: name + "_blocks"),
                    message: "tensor \(name)_blocks is MXFP4 but \(cfgPath) is absent; add quant_method mxfp4")
            }
            return
        }
        if let p = q.exemptingPattern(for: module) {
            if blocks {
                throw MoETuneError.file(path: path(of: name + "_blocks"),
                    message: "tensor \(name)_blocks is MXFP4 but \(cfgPath) modules_to_not_convert \(Printable.quoted(p)) exempts \(module)")
            }
        } else if !blocks {
            throw MoETuneError.file(path: path(of: name),
                message: "tensor \(name) is not MXFP4 but \(cfgPath) converts \(module) (list it in modules_to_not_convert)")
        }
    }

    /// The same dequantization, alive only during `body` (QLoRA re-quantizes it to NF4);
    /// nil when the checkpoint holds no `name`_blocks.
    public func withTemporaryMXFP4Floats<T>(_ name: String, shape: [Int], _ body: (UnsafePointer<Float>) throws -> T) throws -> T? {
        guard let (fileIndex, _) = location[name + "_blocks"] else { return nil }
        Self.readHook?(name, shape.reduce(1, *), false)
        defer { Self.readHook?(name, -shape.reduce(1, *), false) }
        let file = files[fileIndex]
        let (values, got) = try MXFP4.dequantize(name, in: file)
        guard got == shape else {
            throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) (MXFP4) dequantizes to shape \(got), expected \(shape) from config.json")
        }
        return try values.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    /// A buffer built while loading (GPT-OSS's transposed experts) kept alive with the checkpoint.
    public func keep(_ buffer: FloatBuffer) { converted.append(buffer) }

    /// Runs `body` on an fp32 view of `name` that exists only for the call: an aligned F32
    /// tensor straight from the map, anything else converted into a temporary buffer.
    /// The mapped pages are released afterwards, so quantizing while loading keeps at most
    /// one full-precision tensor in memory.
    public func withTemporaryFloats<T>(_ name: String, shape: [Int], _ body: (UnsafePointer<Float>) throws -> T) throws -> T {
        Self.readHook?(name, shape.reduce(1, *), false)
        defer { Self.readHook?(name, -shape.reduce(1, *), false) }
        if let g = gguf {
            let buffer = FloatBuffer(count: shape.reduce(1, *), zeroed: false)
            try g.dequantize(name, shape: shape, into: buffer.pointer)
            return try body(buffer.pointer)
        }
        guard let (fileIndex, info) = location[name] else {
            throw MoETuneError.file(path: directory, message: "tensor \(Printable.quoted(name)) not found in the checkpoint")
        }
        let file = files[fileIndex]
        guard info.shape == shape else {
            throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) has shape \(info.shape), expected \(shape) from config.json")
        }
        defer { file.release(info) }
        let bytes = file.bytes(of: info)
        if info.dtype == .f32, Int(bitPattern: bytes.baseAddress) % MemoryLayout<Float>.alignment == 0 {
            return try body(bytes.baseAddress!.assumingMemoryBound(to: Float.self))
        }
        let buffer = FloatBuffer(count: info.count, zeroed: false)
        guard FloatConversion.toFloat(bytes.baseAddress!, dtype: info.dtype, count: info.count, into: buffer.pointer) else {
            throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) has dtype \(info.dtype.rawValue); model weights must be F32, F16 or BF16")
        }
        return try body(buffer.pointer)
    }

    /// A [rows, cols] weight in bf16 (`base_dtype: bf16`): a BF16 tensor (safetensors or
    /// GGUF) taken as it is, anything else rounded to nearest-even from a temporary fp32 view;
    /// the mapped pages are released afterwards.
    public func bf16Matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        if let g = gguf, let w = try g.bf16Weight(name, rows: rows, cols: cols) { return Matrix(bf16: w) }
        if gguf == nil, let (fileIndex, info) = location[name], info.dtype == .bf16 {
            let file = files[fileIndex]
            guard info.shape == [rows, cols] else {
                throw MoETuneError.file(path: file.path, message: "tensor \(Printable.quoted(name)) has shape \(info.shape), expected \([rows, cols]) from config.json")
            }
            defer { file.release(info) }
            return Matrix(bf16: BF16Weight(stored: file.bytes(of: info).baseAddress!, rows: rows, cols: cols))
        }
        return Matrix(bf16: try withTemporaryFloats(name, shape: [rows, cols]) { BF16Weight(rounding: $0, rows: rows, cols: cols) })
    }

    /// Like `floats` for a [rows, cols] weight.
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> Matrix {
        Matrix(try floats(name, shape: [rows, cols]), rows: rows, cols: cols)
    }
}
