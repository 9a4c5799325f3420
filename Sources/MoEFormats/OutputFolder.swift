import Foundation

/// The one rule every output moe-tune writes obeys, so that an output never destroys what a
/// user had:
/// - an output that equals, contains or lies inside one of the inputs is refused;
/// - an output (folder, or the folder a file goes into) that another moe-tune process holds
///   (its DirectoryLock) is refused naming that process, with or without --overwrite;
/// - an existing regular file is never replaced by a folder, nor a folder by a file;
/// - `--overwrite` replaces only what moe-tune itself wrote there, of the same kind: a model
///   folder that merge or quantize wrote (its marker `.moe-tune-output` says so), a training
///   run that train wrote, a file that carries moe-tune's own mark (a GGUF with the
///   `moe_tune.writer` key, a Modelfile as export-lora writes it); never a foreign folder or
///   file, never a training run from merge or quantize.
public enum OutputFolder {
    /// The file moe-tune writes into every output folder it creates.
    public static let markerName = ".moe-tune-output"

    /// `path` made absolute, with `.`/`..` and symbolic links resolved (as far as it exists:
    /// the longest existing ancestor is resolved and the rest appended, so that a new
    /// `LINK/sub` is seen inside the folder LINK points to).
    public static func canonical(_ path: String) -> String {
        let abs = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var url = URL(fileURLWithPath: abs).standardizedFileURL
        var rest: [String] = []
        while url.path != "/", !FileManager.default.fileExists(atPath: url.path) {
            rest.insert(url.lastPathComponent, at: 0)
            url = url.deletingLastPathComponent()
        }
        let base = url.resolvingSymlinksInPath().path
        return rest.reduce(base) { ($0 == "/" ? "" : $0) + "/" + $1 }
    }

    /// True when `inner` is `outer` or lies inside it.
    public static func contains(_ outer: String, _ inner: String) -> Bool {
        let o = canonical(outer), i = canonical(inner)
        return i == o || i.hasPrefix(o.hasSuffix("/") ? o : o + "/")
    }

    public static func isMarked(_ dir: String) -> Bool {
        FileManager.default.fileExists(atPath: dir + "/" + markerName)
    }

    /// What a folder moe-tune wrote holds.
    public enum Kind: Equatable, Sendable {
        /// train's out_dir: the adapter, checkpoints, metrics.
        case trainingRun
        /// A model folder merge or quantize wrote.
        case model

        var describe: String { self == .trainingRun ? "a training run (written by moe-tune train)" : "a model folder (written by moe-tune merge, quantize or prune)" }
    }

    /// The command `dir`'s marker names ("train", "merge", "quantize"), nil without a marker.
    public static func writer(of dir: String) -> String? {
        guard let data = FileManager.default.contents(atPath: dir + "/" + markerName) else { return nil }
        let text = String(decoding: data.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let prefix = "written by moe-tune "
        return text.hasPrefix(prefix) ? String(text.dropFirst(prefix.count)) : ""
    }

    /// What `dir` holds as far as moe-tune can tell: a training run when its marker names
    /// train or it has train's own files (checkpoints, an adapter), a model when merge or
    /// quantize marked it; nil for a folder without a marker, or one whose marker names
    /// nothing moe-tune writes.
    public static func kind(of dir: String) -> Kind? {
        guard let w = writer(of: dir) else { return nil }
        let fm = FileManager.default
        if w == "train" || fm.fileExists(atPath: dir + "/checkpoints") || fm.fileExists(atPath: dir + "/adapter_config.json") {
            return .trainingRun
        }
        return ["merge", "quantize", "merge/quantize", "prune"].contains(w) ? .model : nil
    }

    /// Refuses `dir` when another moe-tune process holds it (its lock), naming the pid.
    public static func checkNotHeld(_ dir: String, option: String) throws {
        if let pid = DirectoryLock.holder(of: dir) {
            throw MoETuneError.file(path: dir, message: DirectoryLock.inUse(pid, option: option))
        }
    }

    /// Writes the marker into `dir` (atomically).
    public static func mark(_ dir: String, by command: String) throws {
        try AtomicFile.write(Data("written by moe-tune \(command)\n".utf8), to: dir + "/" + markerName)
    }

    /// Checks that `out` may be written as a new folder of `kind`. `option` names it in
    /// messages (`--out`); `inputs` are the folders and files the command reads.
    public static func check(_ out: String, option: String = "--out", inputs: [String], overwrite: Bool, kind: Kind = .model) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        for input in inputs where contains(out, input) {
            throw MoETuneError.file(path: out, message: "\(option) \(canonical(out) == canonical(input) ? "is" : "contains") the input \(input); choose another \(option)")
        }
        // Inside an input folder, the output would become part of a model (or adapter) folder
        // that a later load scans (GGUF outputs: GGUFExport.checkOutput, the same rule).
        for input in inputs where contains(input, out) {
            throw MoETuneError.file(path: out, message: "\(option) lies inside the input \(input); choose another \(option) outside it")
        }
        guard fm.fileExists(atPath: out, isDirectory: &isDir) else { return }
        guard isDir.boolValue else {
            throw MoETuneError.file(path: out, message: "exists and is a file, not a folder; moe-tune never replaces a file (choose another \(option))")
        }
        try checkNotHeld(out, option: option)
        let entries = (try? fm.contentsOfDirectory(atPath: out)) ?? []
        guard !entries.isEmpty else { return }
        guard overwrite else {
            throw MoETuneError.file(path: out, message: "already exists and is not empty; choose another \(option) or pass --overwrite")
        }
        guard isMarked(out) else {
            throw MoETuneError.file(path: out, message: "was not written by moe-tune (it has no \(markerName)); --overwrite replaces only moe-tune's own folders: remove it yourself or choose another \(option)")
        }
        let found = self.kind(of: out)
        guard found == kind else {
            throw MoETuneError.file(path: out, message: "holds \(found?.describe ?? "something moe-tune did not write (its \(markerName) names no moe-tune command)"); "
                + "--overwrite replaces only \(kind.describe): choose another \(option)")
        }
    }

    /// Checks that `out` may be written as one file (a GGUF, a Modelfile): not one of the
    /// inputs nor inside one, not in a folder another moe-tune process holds, its folder
    /// exists; an existing file only with `overwrite`, and only when `isOwn` says moe-tune
    /// wrote it (`what` names the mark in the message).
    public static func checkFile(_ out: String, option: String = "--out", inputs: [String], overwrite: Bool,
                                 what: String, isOwn: (String) -> Bool) throws {
        for i in inputs where contains(i, out) {
            throw MoETuneError.file(path: out, message: "\(option) is or lies inside the input \(i); choose another \(option)")
        }
        let fm = FileManager.default
        let parent = (out as NSString).deletingLastPathComponent
        if !parent.isEmpty, !fm.fileExists(atPath: parent) {
            throw MoETuneError.file(path: out, message: "its folder \(parent) does not exist")
        }
        if let pid = DirectoryLock.holder(of: parent.isEmpty ? "." : parent) {
            throw MoETuneError.file(path: out, message: "its folder \(parent.isEmpty ? "." : parent) " + DirectoryLock.inUse(pid, option: option))
        }
        var isDir: ObjCBool = false
        var st = stat()
        guard lstat(out, &st) == 0 else { return }
        if fm.fileExists(atPath: out, isDirectory: &isDir), isDir.boolValue {
            throw MoETuneError.file(path: out, message: "exists and is a folder; moe-tune never replaces a folder with a file (choose another \(option))")
        }
        guard overwrite else { throw MoETuneError.file(path: out, message: "already exists; choose another \(option) or pass --overwrite") }
        guard (st.st_mode & S_IFMT) == S_IFREG, isOwn(out) else {
            throw MoETuneError.file(path: out, message: "was not written by moe-tune (\(what)); --overwrite replaces only moe-tune's own files: remove it yourself or choose another \(option)")
        }
    }
}
