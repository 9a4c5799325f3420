import Dispatch
import Foundation

/// SIGINT and SIGTERM while training: the first asks the trainer to stop after the current
/// step (it writes a checkpoint and the adapter, and the command exits 130 or 143); the
/// second ends the process at once with that code (checkpoints are written atomically, so
/// the last complete one stays intact). The handlers run on a dispatch queue, not in
/// signal context; the training loop polls `requested` once per step.
final class StopSignals {
    private let lock = NSLock()
    private var received: Int32 = 0
    private var count = 0
    private var sources: [DispatchSourceSignal] = []
    private let onFirst: (Int32) -> Void

    init(onFirst: @escaping (Int32) -> Void) {
        self.onFirst = onFirst
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: DispatchQueue.global())
            // `data` counts the signals coalesced into this event (two at once mean "now").
            source.setEventHandler { [unowned self] in self.handle(sig, times: Int(source.data)) }
            source.resume()
            sources.append(source)
        }
    }

    private func handle(_ sig: Int32, times: Int) {
        lock.lock()
        let first = count == 0
        count += max(times, 1)
        if first { received = sig }
        let again = count > 1
        lock.unlock()
        if again { _exit(128 + sig) }
        onFirst(sig)
    }

    /// The first signal received, or nil.
    var requested: Int32? {
        lock.lock(); defer { lock.unlock() }
        return received == 0 ? nil : received
    }

    /// Restores the default actions.
    func uninstall() {
        for s in sources { s.cancel() }
        for sig in [SIGINT, SIGTERM] { signal(sig, SIG_DFL) }
    }
}
