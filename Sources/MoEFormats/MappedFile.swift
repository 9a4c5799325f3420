import Foundation

/// A whole file mapped read-only, unmapped when this object goes; the readers of
/// safetensors and GGUF files parse and hand out pointers into it.
package final class MappedFile: @unchecked Sendable {
    package let base: UnsafeRawPointer
    package let size: Int

    /// Maps `path`; a file shorter than `minimumSize` is refused with `tooShort(size)`.
    package init(path: String, minimumSize: Int, requireRegular: Bool, tooShort: (Int) -> String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw MoETuneError.file(path: path, message: FileManager.default.fileExists(atPath: path)
                ? "cannot open: \(String(cString: strerror(errno)))" : "file not found")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw MoETuneError.file(path: path, message: "cannot stat: \(String(cString: strerror(errno)))")
        }
        if requireRegular, (st.st_mode & S_IFMT) != S_IFREG { throw MoETuneError.file(path: path, message: "not a regular file") }
        let size = Int(st.st_size)
        guard size >= minimumSize else { throw MoETuneError.file(path: path, message: tooShort(size)) }
        guard let map = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), map != MAP_FAILED else {
            throw MoETuneError.file(path: path, message: "cannot map: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(map)
        self.size = size
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }

    /// Tells the kernel the pages holding bytes offset..<offset+count are no longer needed
    /// (after a conversion copied them), so the page cache does not count against us.
    package func release(offset: Int, count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset / page) * page
        madvise(UnsafeMutableRawPointer(mutating: base + start), offset + count - start, MADV_DONTNEED)
    }
}
