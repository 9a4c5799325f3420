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
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            close(fd)
            let owner = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "unknown"
            if e == EWOULDBLOCK {
                throw MoETuneError.file(path: dir, message: "is in use by another moe-tune run (pid \(owner)); wait for it to finish or choose another out_dir")
            }
            throw MoETuneError.file(path: path, message: "cannot lock: \(String(cString: strerror(e)))")
        }
        let pid = Data("\(getpid())\n".utf8)
        ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
        self.fd = fd
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
