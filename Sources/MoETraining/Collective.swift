import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// The processes one training run spans and what they say to each other: data-parallel
/// training sums gradients, losses and token counts over ranks, and rank 0 hands its
/// checkpoint to the others. One process is `SingleProcess`; `mpirun` gives `OpenMPI`.
/// Every call is made by every rank in the same order (collectives), from one thread.
public protocol Collective: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Sums `count` values at `p` over the ranks, in place: every rank gets the sum.
    func sum(_ p: UnsafeMutablePointer<Float>, count: Int) throws
    func sum(_ p: UnsafeMutablePointer<Double>, count: Int) throws
    /// Overwrites `bytes` bytes at `p` on every rank with rank 0's.
    func broadcast(_ p: UnsafeMutableRawPointer, bytes: Int) throws
    /// The smallest and the largest of `value` over the ranks.
    func range(_ value: UInt64) throws -> (min: UInt64, max: UInt64)
    /// Ends every rank of the run at once (after printing `message` on this one).
    func abort(_ message: String) -> Never
    /// Seconds and bytes spent in `sum` since the last `takeTraffic`.
    func takeTraffic() -> (seconds: Double, bytes: Int)
    /// True on every rank when `flag` is true on any (asked once a step).
    func any(_ flag: Bool) throws -> Bool
}

extension Collective {
    public var isRoot: Bool { rank == 0 }

    /// Sums a few doubles (losses, counts) over the ranks.
    public func sum(_ values: [Double]) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBufferPointer { try sum($0.baseAddress!, count: $0.count) }
        return v
    }

    public func any(_ flag: Bool) throws -> Bool {
        try sum([flag ? 1 : 0])[0] > 0
    }

    /// Rank 0's doubles on every rank.
    public func broadcast(_ values: [Double]) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBytes { try broadcast($0.baseAddress!, bytes: $0.count) }
        return v
    }

    /// Throws unless every rank passed the same `value` (a hash of what must agree).
    public func requireSame(_ value: UInt64, _ what: String) throws {
        let r = try range(value)
        guard r.min == r.max else {
            throw MoETuneError.invalid("the \(size) ranks do not have the same \(what) (rank \(rank): \(String(value, radix: 16))); every rank must run the same config on the same files")
        }
    }
}

/// One process: every collective is the identity.
public final class SingleProcess: Collective {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func sum(_ p: UnsafeMutablePointer<Float>, count: Int) throws {}
    public func sum(_ p: UnsafeMutablePointer<Double>, count: Int) throws {}
    public func broadcast(_ p: UnsafeMutableRawPointer, bytes: Int) throws {}
    public func range(_ value: UInt64) throws -> (min: UInt64, max: UInt64) { (value, value) }
    public func abort(_ message: String) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(1)
    }
    public func takeTraffic() -> (seconds: Double, bytes: Int) { (0, 0) }
    public func any(_ flag: Bool) throws -> Bool { flag }
}

/// A quick fingerprint of the files a run reads (model folder, data files): sizes, the
/// first 64 KiB (config, safetensors headers) and 4 KiB at 16 places in each file, so that
/// ranks on different machines can check they read the same files without hashing
/// gigabytes.
public enum FileDigest {
    public static func of(paths: [String]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix<S: Sequence>(_ bytes: S) where S.Element == UInt8 { for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 } }
        let fm = FileManager.default
        var files: [String] = []
        for p in paths {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: p, isDirectory: &isDir) else { mix("missing:\(p)".utf8); continue }
            if isDir.boolValue {
                let names = ((try? fm.contentsOfDirectory(atPath: p)) ?? []).sorted()
                files += names.filter { !$0.hasPrefix(".") }.map { p + "/" + $0 }
            } else {
                files.append(p)
            }
        }
        for f in files {
            mix((f as NSString).lastPathComponent.utf8)
            guard let handle = FileHandle(forReadingAtPath: f) else { continue }
            defer { try? handle.close() }
            let size = (try? handle.seekToEnd()) ?? 0
            mix(withUnsafeBytes(of: size.littleEndian) { Array($0) })
            var offsets: [UInt64] = [0]
            if size > 65_536 { offsets += (1...16).map { size / 17 * UInt64($0) } }
            for (i, o) in offsets.enumerated() {
                try? handle.seek(toOffset: o)
                if let d = try? handle.read(upToCount: i == 0 ? 65_536 : 4_096) { mix(d) }
            }
        }
        return h
    }
}
