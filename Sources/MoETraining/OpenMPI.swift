import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
#if canImport(Glibc)
import Glibc
#endif

/// Open MPI, loaded at run time: the binary has no link-time MPI dependency, and uses
/// libmpi only when `mpirun` started it (Open MPI sets OMPI_COMM_WORLD_SIZE). Handles
/// (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are the addresses of Open MPI's predefined
/// objects, as its mpi.h defines them. Every wait polls a non-blocking collective with a
/// deadline, so a rank that died or hangs ends the run with a message instead of a hang.
public final class OpenMPI: Collective {
    public let rank: Int
    public let size: Int
    /// Seconds a collective may wait for the other ranks (RunOptions.mpiTimeout, MOE_TUNE_MPI_TIMEOUT, default 300).
    public let timeout: Double

    private typealias InitThread = @convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?, Int32, UnsafeMutablePointer<Int32>) -> Int32
    private typealias CommInt = @convention(c) (OpaquePointer, UnsafeMutablePointer<Int32>) -> Int32
    private typealias Iallreduce = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer, OpaquePointer, OpaquePointer, UnsafeMutablePointer<OpaquePointer?>) -> Int32
    private typealias Ibcast = @convention(c) (UnsafeMutableRawPointer?, Int32, OpaquePointer, Int32, OpaquePointer, UnsafeMutablePointer<OpaquePointer?>) -> Int32
    private typealias Test = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeMutablePointer<Int32>, UnsafeMutableRawPointer?) -> Int32
    private typealias Abort = @convention(c) (OpaquePointer, Int32) -> Int32
    private typealias Finalize = @convention(c) () -> Int32

    private let iallreduce: Iallreduce, ibcast: Ibcast, test: Test, abortFn: Abort, finalizeFn: Finalize
    private let world: OpaquePointer, float: OpaquePointer, double: OpaquePointer, uint64: OpaquePointer, byte: OpaquePointer
    private let opSum: OpaquePointer, opMin: OpaquePointer, opMax: OpaquePointer
    private var trafficSeconds = 0.0, trafficBytes = 0
    private var finalized = false

    /// The run's ranks when Open MPI's launcher started this process (`environment`, the process's,
    /// holds OMPI_COMM_WORLD_SIZE); nil otherwise. `timeout`: RunOptions.mpiTimeout.
    public static func fromEnvironment(_ environment: [String: String], timeout: Double) throws -> OpenMPI? {
        guard let sizeText = environment["OMPI_COMM_WORLD_SIZE"] else { return nil }
        return try OpenMPI(launchedSize: sizeText, timeout: timeout)
    }

    private init(launchedSize: String, timeout: Double) throws {
        self.timeout = timeout
        var lib: UnsafeMutableRawPointer?
        var why = ""
        // RTLD_GLOBAL: Open MPI's own plugins resolve libmpi's symbols through it.
        for name in ["libmpi.so.40", "libmpi.so"] {
            lib = dlopen(name, RTLD_NOW | RTLD_GLOBAL)
            if lib != nil { break }
            why = dlerror().map { String(cString: $0) } ?? name
        }
        guard let lib else {
            throw MoETuneError.invalid("started by mpirun (OMPI_COMM_WORLD_SIZE=\(launchedSize)) but Open MPI's library cannot be loaded (\(why)); install it: apt-get install openmpi-bin libopenmpi-dev")
        }
        func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let p = dlsym(lib, name) else {
                throw MoETuneError.invalid("the loaded libmpi has no \(name): moe-tune needs Open MPI 4 or newer")
            }
            return p
        }
        func function<T>(_ name: String, _: T.Type) throws -> T { unsafeBitCast(try symbol(name), to: T.self) }
        func handle(_ name: String) throws -> OpaquePointer { OpaquePointer(try symbol(name)) }
        let initThread = try function("MPI_Init_thread", InitThread.self)
        let commRank = try function("MPI_Comm_rank", CommInt.self)
        let commSize = try function("MPI_Comm_size", CommInt.self)
        iallreduce = try function("MPI_Iallreduce", Iallreduce.self)
        ibcast = try function("MPI_Ibcast", Ibcast.self)
        test = try function("MPI_Test", Test.self)
        abortFn = try function("MPI_Abort", Abort.self)
        finalizeFn = try function("MPI_Finalize", Finalize.self)
        world = try handle("ompi_mpi_comm_world")
        float = try handle("ompi_mpi_float")
        double = try handle("ompi_mpi_double")
        uint64 = try handle("ompi_mpi_uint64_t")
        byte = try handle("ompi_mpi_byte")
        opSum = try handle("ompi_mpi_op_sum")
        opMin = try handle("ompi_mpi_op_min")
        opMax = try handle("ompi_mpi_op_max")
        var provided: Int32 = 0
        // MPI_THREAD_FUNNELED (1): only the main thread calls MPI; the compute threads never do.
        guard initThread(nil, nil, 1, &provided) == 0 else { throw MoETuneError.invalid("MPI_Init_thread failed") }
        var r: Int32 = 0, s: Int32 = 0
        _ = commRank(world, &r)
        _ = commSize(world, &s)
        rank = Int(r)
        size = Int(s)
    }

    /// Polls `request` until it completes; past the deadline, ends the whole run.
    private func wait(_ request: inout OpaquePointer?, _ what: String) {
        let deadline = Date().addingTimeInterval(timeout)
        var done: Int32 = 0
        var polls = 0
        while true {
            guard test(&request, &done, nil) == 0 else { abort("rank \(rank): MPI failed during \(what)") }
            if done != 0 { return }
            polls += 1
            if polls > 10_000 {
                if Date() > deadline {
                    abort("rank \(rank): no answer from the other ranks for \(Int(timeout)) s during \(what): a rank has died or hangs (MOE_TUNE_MPI_TIMEOUT sets the limit)")
                }
                usleep(200)
            }
        }
    }

    private func allreduce(_ p: UnsafeMutableRawPointer, count: Int, type: OpaquePointer, op: OpaquePointer, elementBytes: Int, _ what: String) {
        let start = Date()
        var done = 0
        while done < count {
            let n = min(count - done, 1 << 28)
            var request: OpaquePointer?
            // MPI_IN_PLACE is (void *) 1 in Open MPI's mpi.h.
            let rc = iallreduce(UnsafeRawPointer(bitPattern: 1), p + done * elementBytes, Int32(n), type, op, world, &request)
            guard rc == 0 else { abort("rank \(rank): MPI_Iallreduce failed (\(rc)) during \(what)") }
            wait(&request, what)
            done += n
        }
        trafficSeconds += Date().timeIntervalSince(start)
        trafficBytes += count * elementBytes
    }

    public func sum(_ p: UnsafeMutablePointer<Float>, count: Int) throws {
        allreduce(UnsafeMutableRawPointer(p), count: count, type: float, op: opSum, elementBytes: 4, "a gradient sum")
    }

    public func sum(_ p: UnsafeMutablePointer<Double>, count: Int) throws {
        allreduce(UnsafeMutableRawPointer(p), count: count, type: double, op: opSum, elementBytes: 8, "a loss sum")
    }

    public func range(_ value: UInt64) throws -> (min: UInt64, max: UInt64) {
        var lo = value, hi = value
        allreduce(&lo, count: 1, type: uint64, op: opMin, elementBytes: 8, "the start-up check")
        allreduce(&hi, count: 1, type: uint64, op: opMax, elementBytes: 8, "the start-up check")
        return (lo, hi)
    }

    public func broadcast(_ p: UnsafeMutableRawPointer, bytes: Int) throws {
        var done = 0
        while done < bytes {
            let n = min(bytes - done, 1 << 30)
            var request: OpaquePointer?
            let rc = ibcast(p + done, Int32(n), byte, 0, world, &request)
            guard rc == 0 else { abort("rank \(rank): MPI_Ibcast failed (\(rc))") }
            wait(&request, "the checkpoint broadcast")
            done += n
        }
    }

    public func abort(_ message: String) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        _ = abortFn(world, 1)
        exit(1)
    }

    public func takeTraffic() -> (seconds: Double, bytes: Int) {
        defer { trafficSeconds = 0; trafficBytes = 0 }
        return (trafficSeconds, trafficBytes)
    }

    /// Ends MPI on a clean exit (every rank calls it once).
    public func finalize() {
        guard !finalized else { return }
        finalized = true
        _ = finalizeFn()
    }
}
