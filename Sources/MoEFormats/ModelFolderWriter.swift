import Foundation

/// Writes a new Hugging Face model folder the safe way: the rules of `OutputFolder` are
/// checked first; everything goes into a staging folder beside the destination (with the
/// moe-tune marker), every file fsynced; it is renamed into place only when complete. A
/// folder being replaced is first renamed aside and removed only after the new one is in
/// place (never while another moe-tune process holds it). Staging folders of killed runs are
/// removed at the next start.
package struct ModelFolderWriter {
    package let outDir: String
    package let staging: String

    package init(outDir: String, overwrite: Bool, inputs: [String] = [], command: String = "") throws {
        try OutputFolder.check(outDir, inputs: inputs, overwrite: overwrite)
        self.outDir = outDir
        let parent = (outDir as NSString).deletingLastPathComponent
        AtomicFile.removeStale(in: parent.isEmpty ? "." : parent)
        staging = AtomicFile.temporaryPath(for: outDir)
        self.command = command
    }

    package let command: String

    /// Runs `body` with the staging folder, then puts it in place; on any error the
    /// staging folder is removed and the destination is left as it was.
    package func write<T>(_ body: (String) throws -> T) throws -> T {
        let fm = FileManager.default
        try? fm.removeItem(atPath: staging)
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        } catch {
            throw MoETuneError.file(path: staging, message: "cannot create the output folder: \(error.localizedDescription)")
        }
        do {
            let result = try body(staging)
            try OutputFolder.mark(staging, by: command.isEmpty ? "merge/quantize" : command)
            var aside: String?
            if fm.fileExists(atPath: outDir) {
                // Asked again at the moment of replacing: a run may have started there meanwhile.
                try OutputFolder.checkNotHeld(outDir, option: "--out")
                let old = AtomicFile.temporaryPath(for: outDir + ".old")
                guard rename(outDir, old) == 0 else {
                    throw MoETuneError.file(path: outDir, message: "cannot move the old folder aside: \(String(cString: strerror(errno)))")
                }
                aside = old
            }
            guard rename(staging, outDir) == 0 else {
                let reason = String(cString: strerror(errno))
                if let aside { rename(aside, outDir) }
                throw MoETuneError.file(path: outDir, message: "cannot move the new folder into place: \(reason)")
            }
            AtomicFile.syncDirectory(of: outDir)
            if let aside { try? fm.removeItem(atPath: aside) }
            return result
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
    }

    /// Copies the tokenizer and generation files a model folder has (atomically, fsynced).
    package static func copyTokenizerFiles(from modelDir: String, to dir: String) throws {
        let fm = FileManager.default
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
        where fm.fileExists(atPath: modelDir + "/" + f) {
            guard let data = fm.contents(atPath: modelDir + "/" + f) else {
                throw MoETuneError.file(path: modelDir + "/" + f, message: "cannot read")
            }
            try AtomicFile.write(data, to: dir + "/" + f)
        }
    }
}
