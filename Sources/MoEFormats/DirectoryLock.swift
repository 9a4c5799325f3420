import Foundation

/// An exclusive lock on a folder for as long as a run uses it: flock(2) on
/// `DIR/.moe-tune.lock`, which holds the owner's pid. The kernel drops the lock when the
/// process ends, however it ends, so a killed run never leaves the folder locked.
public final class DirectoryLock {
    public static let fileName = ".moe-tune.lock"
    private let fd: Int32
    public let path: String

    /// Takes the lock, or refuses naming the pid of the run that holds it.
    public init(directory dir: String) throws {
        path = dir + "/" + DirectoryLock.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MoETuneError.file(path: path, message: "cannot create the lock file: \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            let owner = DirectoryLock.owner(fd)
            close(fd)
            if e == EWOULDBLOCK {
                throw MoETuneError.file(path: dir, message: DirectoryLock.inUse(owner, option: "out_dir"))
            }
            throw MoETuneError.file(path: path, message: "cannot lock: \(String(cString: strerror(e)))")
        }
        let pid = Data("\(getpid())\n".utf8)
        ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
        self.fd = fd
    }

    /// The pid of the moe-tune process that holds `dir`'s lock now, or nil when nobody does
    /// (no lock file, or a lock file whose owner has ended). Takes nothing and creates
    /// nothing: a command that writes over `dir` asks this before it touches anything.
    public static func holder(of dir: String) -> String? {
        let fd = open(dir + "/" + fileName, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return nil
        }
        return errno == EWOULDBLOCK ? owner(fd) : nil
    }

    /// The one message for a folder another run holds.
    package static func inUse(_ owner: String, option: String) -> String {
        "is in use by another moe-tune run (pid \(owner)); wait for it to finish or choose another \(option)"
    }

    private static func owner(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buf, 31, 0)
        guard n > 0 else { return "unknown" }
        let s = String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return s.allSatisfy(\.isNumber) && !s.isEmpty ? s : "unknown"
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
