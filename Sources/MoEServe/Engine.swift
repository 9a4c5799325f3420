import Foundation
import MoEFormats
import MoECore
import MoEInference

/// What the engine tells a waiting request.
package enum EngineEvent: Sendable {
    /// The prompt was prefilled; this many of its tokens were not computed (a cached prefix).
    case admitted(cachedPromptTokens: Int)
    case token(Int32)
    case finished(GenerationResult)
    case failed(String)
}

/// The one thread that runs the model. Requests arrive from any thread; for each served
/// name (the base, or the base with one adapter set) a BatchGenerator decodes its requests
/// together, continuous batching as in `generate --prompts`; the names take turns step by
/// step. A generator is made on its name's first request (its KV caches are allocated then).
package final class Engine: @unchecked Sendable {
    package let model: Transformer
    package let maxLength: Int
    package let parallel: Int
    private let adapters: [String: AdapterSet?]
    private let stopIds: Set<Int32>
    private let products: ProductPath

    private struct Job { let id: Int; let model: String; let request: GenerationRequest; let sink: AsyncStream<EngineEvent>.Continuation }
    private let inbox = NSCondition()   // guards `arrivals`, `cancels`, `nextId`
    private var arrivals: [Job] = []
    private var cancels: [Int] = []
    private var nextId = 0
    // Engine thread only:
    private var generators: [String: BatchGenerator] = [:]
    private var sinks: [Int: AsyncStream<EngineEvent>.Continuation] = [:]
    /// The served name of each request with a sink (a failed generator fails all of its own).
    private var nameOf: [Int: String] = [:]

    /// `adapters`: the served names, nil for the base alone.
    package init(model: Transformer, adapters: [String: AdapterSet?], maxLength: Int, parallel: Int,
                 stopIds: Set<Int32>, products: ProductPath) {
        self.model = model
        self.adapters = adapters
        self.maxLength = maxLength
        self.parallel = max(1, parallel)
        self.stopIds = stopIds
        self.products = products
    }

    package var names: [String] { adapters.keys.sorted() }

    /// Starts the engine's thread (8 MiB of stack, as the main thread has).
    package func start() {
        let t = Thread { [self] in loop() }
        t.stackSize = 8 << 20
        t.name = "moe-tune engine"
        t.start()
    }

    /// Queues a request for `name` (one of `names`); its events arrive on the stream, the
    /// last one `.finished` or `.failed`.
    package func submit(_ request: GenerationRequest, model name: String) -> (id: Int, events: AsyncStream<EngineEvent>) {
        let (stream, sink) = AsyncStream<EngineEvent>.makeStream()
        inbox.lock()
        let id = nextId
        nextId += 1
        arrivals.append(Job(id: id, model: name, request: request, sink: sink))
        inbox.signal()
        inbox.unlock()
        return (id, stream)
    }

    /// The client of request `id` left: its slot goes to the next.
    package func cancel(_ id: Int) {
        inbox.lock()
        cancels.append(id)
        inbox.signal()
        inbox.unlock()
    }

    private func loop() {
        while true {
            inbox.lock()
            while arrivals.isEmpty, cancels.isEmpty, !generators.values.contains(where: \.hasWork) { inbox.wait() }
            let jobs = arrivals, gone = cancels
            arrivals = []; cancels = []
            inbox.unlock()
            for job in jobs { admit(job) }
            for id in gone {
                guard let sink = sinks.removeValue(forKey: id) else { continue }
                nameOf[id] = nil
                for g in generators.values { g.cancel(id: id) }
                sink.finish()
            }
            for name in generators.keys.sorted() where generators[name]!.hasWork { advance(name) }
        }
    }

    private func admit(_ job: Job) {
        guard let set = adapters[job.model] else {
            job.sink.yield(.failed("unknown model \(job.model)")); job.sink.finish(); return
        }
        let g = generators[job.model] ?? makeGenerator(set)
        generators[job.model] = g
        do {
            try g.submit(job.request, id: job.id)
            sinks[job.id] = job.sink
            nameOf[job.id] = job.model
        } catch {
            job.sink.yield(.failed("\(error)")); job.sink.finish()
        }
    }

    /// A generator for one served name; it reports each prompt's cached tokens to its request.
    private func makeGenerator(_ set: AdapterSet?) -> BatchGenerator {
        let g = BatchGenerator(model: model, adapters: set, maxLength: maxLength, parallel: parallel, stopIds: stopIds, products: products)
        g.onAdmit = { [unowned self] id, cached in sinks[id]?.yield(.admitted(cachedPromptTokens: cached)) }
        return g
    }

    /// One round of `name`'s generator. If it fails, its requests get the error and the
    /// generator is made anew for the next ones.
    private func advance(_ name: String) {
        let g = generators[name]!
        do {
            try g.advance(onToken: { id, t in sinks[id]?.yield(.token(t)) },
                          onFinish: { id, r in
                              nameOf[id] = nil
                              if let s = sinks.removeValue(forKey: id) { s.yield(.finished(r)); s.finish() }
                          })
        } catch {
            generators[name] = nil
            // Every request of this name: those running or waiting, and those of the admission
            // that failed (no longer in the generator).
            for id in Array(sinks.keys) where nameOf[id] == name {
                nameOf[id] = nil
                sinks[id]?.yield(.failed("\(error)")); sinks.removeValue(forKey: id)?.finish()
            }
        }
    }
}
