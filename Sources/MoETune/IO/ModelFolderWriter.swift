import Foundation

/// Writes a new Hugging Face model folder the safe way: everything goes into a staging
/// folder beside the destination, which is renamed into place only when complete, and an
/// existing non-empty destination is refused unless `overwrite`.
struct ModelFolderWriter {
    let outDir: String
    let staging: String

    init(outDir: String, overwrite: Bool) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: outDir), !((try? fm.contentsOfDirectory(atPath: outDir)) ?? []).isEmpty, !overwrite {
            throw MoETuneError.file(path: outDir, message: "already exists and is not empty; choose another --out or pass --overwrite")
        }
        self.outDir = outDir
        let parent = (outDir as NSString).deletingLastPathComponent
        staging = (parent.isEmpty ? "." : parent) + "/.\((outDir as NSString).lastPathComponent).tmp-\(getpid())"
    }

    /// Runs `body` with the staging folder, then puts it in place; on any error the
    /// staging folder is removed and the destination is left as it was.
    func write<T>(_ body: (String) throws -> T) throws -> T {
        let fm = FileManager.default
        try? fm.removeItem(atPath: staging)
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        do {
            let result = try body(staging)
            if fm.fileExists(atPath: outDir) { try fm.removeItem(atPath: outDir) }
            try fm.moveItem(atPath: staging, toPath: outDir)
            return result
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
    }

    /// Copies the tokenizer and generation files a model folder has.
    static func copyTokenizerFiles(from modelDir: String, to dir: String) throws {
        let fm = FileManager.default
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
        where fm.fileExists(atPath: modelDir + "/" + f) {
            try fm.copyItem(atPath: modelDir + "/" + f, toPath: dir + "/" + f)
        }
    }
}
