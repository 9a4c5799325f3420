import Foundation
import Synchronization
import CKernels
import MoEFormats
import MoEText

/// How moe-tune spreads work over the cores. Every parallel region runs on CKernels' pool of
/// persistent worker threads (pool.c: no thread is created and nothing allocated per region)
/// with up to `Parallel.workers` iterations in flight; the calling thread takes part.
///
/// A region's body knows it is inside one (`inRegion`) and which worker slot it holds
/// (`workerIndex`, for per-worker scratch). Nested regions and matrix-product splits run
/// on the calling worker alone, so code such as a whole MoE expert can run as one task of
/// a region and call the ordinary layer functions, which would otherwise split their own
/// products over the cores.
public enum Parallel {
    /// Worker count of every region: RunOptions.threads (`--threads N` / MOE_TUNE_THREADS),
    /// else the active cores; set by `RunOptions.install()` before any forward/backward state
    /// is allocated (per-worker scratch is sized by it).
    nonisolated(unsafe) public internal(set) static var workers: Int = activeCores

    /// The cores this process may run on.
    package static var activeCores: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

    /// MoE experts as tasks of one region (each expert's products unsplit on one worker),
    /// or one after another with each product split over the workers
    /// (RunOptions.expertTasks, MOE_TUNE_EXPERT_TASKS=0; kept to measure the two side by side).
    nonisolated(unsafe) public static var expertTasks = true

    /// Thread-specific slot: nil outside a region, worker index + 1 inside.
    fileprivate static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// True inside the body of a parallel region.
    @inline(__always)
    public static var inRegion: Bool { pthread_getspecific(key) != nil }

    /// The worker slot (0..<workers) of the region body running on this thread; 0 outside.
    @inline(__always)
    public static var workerIndex: Int {
        guard let p = pthread_getspecific(key) else { return 0 }
        return Int(bitPattern: p) - 1
    }

    /// Runs body(0..<count) with as many iterations in flight as there are threads;
    /// serially when count <= 1 or when already inside a region. Iteration i holds worker
    /// slot i (count must not exceed `workers` when the body uses per-worker scratch).
    @inline(__always)
    public static func run(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 || inRegion {
            for i in 0..<count { body(i) }
            return
        }
        // CKernels' pool (pool.c): nothing allocated per region, unlike concurrentPerform.
        withoutActuallyEscaping(body) { task in
            withUnsafePointer(to: task) { context in
                _ = mt_pool_run(count, Int32(workers), { context, i in
                    pthread_setspecific(Parallel.key, UnsafeRawPointer(bitPattern: i + 1))
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(i)
                    pthread_setspecific(Parallel.key, nil)
                }, UnsafeMutableRawPointer(mutating: context))
            }
        }
    }

    /// A task of a region as a C function of its context and an index: no closure to box,
    /// so a region run with one allocates nothing (a Swift closure made escaping for the
    /// pool is two heap objects per region).
    public typealias Task = @convention(c) (UnsafeMutableRawPointer?, Int) -> Void

    private struct TaskList {
        let task: Task
        let context: UnsafeMutableRawPointer?
        let order: UnsafePointer<Int32>
        let count: Int
    }

    /// The next task of the running `forEachTask` region (one region runs at a time).
    private static let nextTask = Atomic<Int>(0)

    /// `forEachTask` with the task as a C function: task(context, order[0]), ... each worker
    /// taking the next as it finishes one. Allocates nothing.
    public static func forEachTask(_ order: UnsafePointer<Int32>, count: Int, context: UnsafeMutableRawPointer?, _ task: Task) {
        let w = min(workers, count)
        if w <= 1 || inRegion || !expertTasks || BLAS.threading == .library {
            for i in 0..<count { task(context, Int(order[i])) }
            return
        }
        nextTask.store(0, ordering: .relaxed)
        var list = TaskList(task: task, context: context, order: order, count: count)
        withUnsafeMutablePointer(to: &list) { p in
            _ = mt_pool_run(w, Int32(workers), { context, i in
                pthread_setspecific(Parallel.key, UnsafeRawPointer(bitPattern: i + 1))
                let l = context!.assumingMemoryBound(to: TaskList.self)
                while true {
                    let k = Parallel.nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
                    if k >= l.pointee.count { break }
                    l.pointee.task(l.pointee.context, Int(l.pointee.order[k]))
                }
                pthread_setspecific(Parallel.key, nil)
            }, UnsafeMutableRawPointer(p))
        }
    }

    /// Runs task(order[0]), task(order[1]), ... with each worker taking the next task as it
    /// finishes one (dynamic scheduling: tasks of uneven cost balance; give the costliest
    /// first). Which worker runs a task does not change its result.
    public static func forEachTask(_ order: UnsafePointer<Int32>, count: Int, _ task: (Int) -> Void) {
        let w = min(workers, count)
        // With OpenBLAS's own threads (BLAS.threading == .library) the products are not
        // called side by side: each takes the cores itself.
        if w <= 1 || inRegion || !expertTasks || BLAS.threading == .library {
            for i in 0..<count { task(Int(order[i])) }
            return
        }
        let next = Atomic<Int>(0)
        run(w) { _ in
            while true {
                let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= count { break }
                task(Int(order[i]))
            }
        }
    }
}

/// One scratch buffer per worker slot (`Parallel.workerIndex`), for layer code that may run
/// inside a region (an MoE expert task) and needs a temporary: each slot is read and grown
/// by its own worker only. Grows to the largest request (the first steps), then allocates
/// nothing.
public final class PerWorkerScratch: @unchecked Sendable {
    private let buffers: UnsafeMutablePointer<FloatBuffer?>
    private static let slots = 1024   // Parallel.workers is at most 1024
    private let minimum: Int

    public init(minimumCount: Int) {
        minimum = minimumCount
        buffers = .allocate(capacity: PerWorkerScratch.slots)
        buffers.initialize(repeating: nil, count: PerWorkerScratch.slots)
    }

    deinit {
        buffers.deinitialize(count: PerWorkerScratch.slots)
        buffers.deallocate()
    }

    /// This worker's buffer, at least `count` floats.
    @inline(__always)
    public func pointer(count: Int) -> UnsafeMutablePointer<Float> {
        let w = Parallel.workerIndex
        if let b = buffers[w], b.count >= count { return b.pointer }
        let b = FloatBuffer(count: max(count, minimum), zeroed: false)
        buffers[w] = b
        return b.pointer
    }
}

/// Splits `0..<count` into one contiguous chunk per worker and runs them in parallel.
/// The body gets a half-open range. Falls back to a plain call for small work or inside
/// a parallel region.
@inline(__always)
public func parallelChunks(_ count: Int, minChunk: Int = 16, _ body: (Range<Int>) -> Void) {
    let workers = min(Parallel.workers, max(1, count / minChunk))
    if workers <= 1 || Parallel.inRegion {
        body(0..<count)
        return
    }
    let per = (count + workers - 1) / workers
    Parallel.run(workers) { w in
        let lo = w * per, hi = min(count, lo + per)
        if lo < hi { body(lo..<hi) }
    }
}
