import Foundation
import MoEFormats
import MoEText
import MoECore

/// The process's environment, read once, here: the run options (the MOE_TUNE_* switches,
/// RunOptions) and Open MPI's launcher variables (OMPI_COMM_WORLD_SIZE, TrainCommand) come from it.
let processEnvironment = ProcessInfo.processInfo.environment

/// The run options of this process, built once from the environment and the command's flags and
/// installed before any work.
enum StartUp {
    nonisolated(unsafe) private static var installed: RunOptions?

    /// Builds and installs the options on the first call (a bad MOE_TUNE_* value is refused, an
    /// unknown MOE_TUNE_* variable gets a one-line warning on stderr); later calls return them.
    /// `threads`: the command's `--threads`, which overrides MOE_TUNE_THREADS.
    @discardableResult
    static func runOptions(threads: Int? = nil) throws -> RunOptions {
        if let installed { return installed }
        var warnings: [String] = []
        var options = try RunOptions(environment: processEnvironment, warnings: &warnings)
        if let threads { try options.setThreads(threads) }
        for warning in warnings {
            FileHandle.standardError.write(Data("moe-tune: warning: \(Printable.text(warning, limit: MoETuneError.maxLength))\n".utf8))
        }
        options.install()
        installed = options
        return options
    }
}
