import Foundation

/// Whole-file writes that appear at their destination complete or not at all: the data
/// goes to a temporary name in the same folder (`.NAME.moe-tune-tmp-PID`), is fsynced,
/// then renamed over the destination, and the folder is fsynced. A failed write removes
/// its temporary; a killed run's temporaries are removed by `removeStale` at the next start.
/// A full disk is reported as "no space left on device (needed about N MB at PATH)".
public enum AtomicFile {
    /// Testing hook: an errno to fail the write of a path with (e.g. ENOSPC), or nil.
    public static var injectedError: ((String) -> Int32?)?

    package static let tempMarker = ".moe-tune-tmp-"

    /// The temporary name `path` is written under before it is renamed into place.
    public static func temporaryPath(for path: String) -> String {
        let dir = (path as NSString).deletingLastPathComponent
        return (dir.isEmpty ? "." : dir) + "/.\((path as NSString).lastPathComponent)\(tempMarker)\(getpid())"
    }

    public static func write(_ data: Data, to path: String) throws {
        let file = try Stream(path: path, totalBytes: data.count)
        try file.append(data)
        try file.finish()
    }

    /// A file written in pieces under the same rules: opened under its temporary name,
    /// appended to, then fsynced and renamed into place by `finish`. A failed append,
    /// `abort`, or dropping it unfinished removes the temporary. Errors report `totalBytes`,
    /// the whole file's size.
    public final class Stream {
        public let path: String
        public let totalBytes: Int
        private let tmp: String
        private var fd: Int32

        public init(path: String, totalBytes: Int) throws {
            self.path = path
            self.totalBytes = totalBytes
            tmp = AtomicFile.temporaryPath(for: path)
            unlink(tmp)
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw AtomicFile.error(errno, path: path, bytes: totalBytes) }
        }

        deinit { abort() }

        /// False once finished or aborted.
        public var isOpen: Bool { fd >= 0 }

        public func append(_ bytes: UnsafeRawBufferPointer) throws {
            do { try AtomicFile.writeAll(fd: fd, bytes: bytes, path: path, reportBytes: totalBytes) } catch { abort(); throw error }
        }

        public func append(_ data: Data) throws { try data.withUnsafeBytes { try append($0) } }

        public func finish() throws {
            guard fsync(fd) == 0 else { let e = errno; abort(); throw AtomicFile.error(e, path: path, bytes: totalBytes) }
            close(fd)
            fd = -1
            guard rename(tmp, path) == 0 else {
                let e = errno
                unlink(tmp)
                throw AtomicFile.error(e, path: path, bytes: totalBytes)
            }
            AtomicFile.syncDirectory(of: path)
        }

        public func abort() {
            guard fd >= 0 else { return }
            close(fd)
            fd = -1
            unlink(tmp)
        }
    }

    /// Writes every byte to `fd` (retrying short writes and EINTR); an error reports
    /// `reportBytes` (the whole file's size) or the bytes'.
    package static func writeAll(fd: Int32, bytes raw: UnsafeRawBufferPointer, path: String, reportBytes: Int? = nil) throws {
        if let e = injectedError?(path) { throw error(e, path: path, bytes: reportBytes ?? raw.count) }
        var done = 0
        while done < raw.count {
            let n = Foundation.write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw error(errno, path: path, bytes: reportBytes ?? raw.count)
            }
            done += n
        }
    }

    /// One-line error for a failed write of about `bytes` bytes to `path`.
    package static func error(_ code: Int32, path: String, bytes: Int) -> MoETuneError {
        if code == ENOSPC || code == EDQUOT {
            let mb = max(1, (bytes + (1 << 20) - 1) >> 20)
            return .file(path: path, message: "no space left on device (needed about \(mb) MB at \(path))")
        }
        return .file(path: path, message: "cannot write: \(String(cString: strerror(code)))")
    }

    /// fsyncs the folder holding `path`, so the rename survives a power loss.
    package static func syncDirectory(of path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        let fd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    /// The pid a temporary name of moe-tune ends in (`.X.moe-tune-tmp-PID`), or nil for
    /// any other name.
    package static func temporaryOwner(_ name: String) -> Int32? {
        guard name.hasPrefix("."), let r = name.range(of: tempMarker, options: .backwards),
              let pid = Int32(name[r.upperBound...]), pid > 0 else { return nil }
        return pid
    }

    /// Removes the temporaries (files or staging folders) in `dir` left by runs that no
    /// longer exist. With `all`, removes every one not of this process (the caller holds
    /// the folder's lock, so no other run can be writing there). Returns the names removed.
    @discardableResult
    public static func removeStale(in dir: String, all: Bool = false) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names {
            guard let pid = temporaryOwner(name), pid != getpid() else { continue }
            if !all, kill(pid, 0) == 0 || errno != ESRCH { continue }
            if (try? FileManager.default.removeItem(atPath: dir + "/" + name)) != nil { removed.append(name) }
        }
        return removed
    }
}
