import Foundation

/// The rules every folder moe-tune writes obeys, so that an output never destroys what a
/// user had: an existing regular file is never replaced by a folder; an output that equals,
/// contains or lies inside one of the inputs is refused; and only a folder that moe-tune wrote itself
/// (it holds the marker file `.moe-tune-output`) is ever replaced, and only when asked.
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

    /// Writes the marker into `dir` (atomically).
    public static func mark(_ dir: String, by command: String) throws {
        try AtomicFile.write(Data("written by moe-tune \(command)\n".utf8), to: dir + "/" + markerName)
    }

    /// Checks that `out` may be written as a new folder. `option` names it in messages
    /// (`--out`); `inputs` are the folders and files the command reads.
    public static func check(_ out: String, option: String = "--out", inputs: [String], overwrite: Bool) throws {
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
        let entries = (try? fm.contentsOfDirectory(atPath: out)) ?? []
        guard !entries.isEmpty else { return }
        guard overwrite else {
            throw MoETuneError.file(path: out, message: "already exists and is not empty; choose another \(option) or pass --overwrite")
        }
        guard isMarked(out) else {
            throw MoETuneError.file(path: out, message: "was not written by moe-tune (it has no \(markerName)); --overwrite replaces only moe-tune's own folders: remove it yourself or choose another \(option)")
        }
    }
}
