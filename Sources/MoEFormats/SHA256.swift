import Foundation

/// SHA-256 (FIPS 180-4) of a byte string or a file, as a lower-case hex digest. Used to name a
/// tokenizer's pre-tokenizer the way llama.cpp's converter does (Merge/GGUFVocabulary), and
/// for the manifests that let a training checkpoint prove itself (TrainCheckpoint).
package enum SHA256 {
    fileprivate static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    package static func hex(_ message: [UInt8]) -> String {
        var h = Hasher()
        message.withUnsafeBytes { h.update($0) }
        return h.finish()
    }

    /// The digest of a file's contents, read 1 MiB at a time, with its size.
    package static func file(_ path: String) throws -> (size: Int, sha256: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MoETuneError.file(path: path, message: "cannot read: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var h = Hasher()
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var size = 0
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw MoETuneError.file(path: path, message: "cannot read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            buf.withUnsafeBytes { h.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            size += n
        }
        return (size, h.finish())
    }

    /// SHA-256 over bytes given in pieces.
    package struct Hasher {
        private var h: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
            (0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19)
        private var block = [UInt8](repeating: 0, count: 64)
        private var used = 0
        private var length: UInt64 = 0
        private var w = [UInt32](repeating: 0, count: 64)

        package init() {}

        package mutating func update(_ bytes: UnsafeRawBufferPointer) {
            length &+= UInt64(bytes.count)
            var i = 0
            if used > 0 {
                while used < 64, i < bytes.count { block[used] = bytes[i]; used += 1; i += 1 }
                if used == 64 { block.withUnsafeBytes { compress($0.baseAddress!) }; used = 0 }
            }
            while bytes.count - i >= 64 {
                compress(bytes.baseAddress! + i)
                i += 64
            }
            while i < bytes.count { block[used] = bytes[i]; used += 1; i += 1 }
        }

        package mutating func finish() -> String {
            let bits = length &* 8
            var tail: [UInt8] = [0x80]
            while (used + tail.count) % 64 != 56 { tail.append(0) }
            for i in (0..<8).reversed() { tail.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
            let saved = length
            tail.withUnsafeBytes { update($0) }
            length = saved
            let digits = Array("0123456789abcdef".utf8)
            var out: [UInt8] = []
            for v in [h.0, h.1, h.2, h.3, h.4, h.5, h.6, h.7] {
                for s in stride(from: 28, through: 0, by: -4) { out.append(digits[Int((v >> UInt32(s)) & 15)]) }
            }
            return String(decoding: out, as: UTF8.self)
        }

        private mutating func compress(_ p: UnsafeRawPointer) {
            @inline(__always) func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
            w.withUnsafeMutableBufferPointer { w in
                SHA256.k.withUnsafeBufferPointer { k in
                    for i in 0..<16 {
                        w[i] = UInt32(p.load(fromByteOffset: 4 * i, as: UInt8.self)) << 24 | UInt32(p.load(fromByteOffset: 4 * i + 1, as: UInt8.self)) << 16
                            | UInt32(p.load(fromByteOffset: 4 * i + 2, as: UInt8.self)) << 8 | UInt32(p.load(fromByteOffset: 4 * i + 3, as: UInt8.self))
                    }
                    for i in 16..<64 {
                        let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                        let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                        w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
                    }
                    var (a, b, c, d, e, f, g, hh) = h
                    for i in 0..<64 {
                        let t1 = hh &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[i] &+ w[i]
                        let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
                        (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
                    }
                    h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e, h.5 &+ f, h.6 &+ g, h.7 &+ hh)
                }
            }
        }
    }
}
