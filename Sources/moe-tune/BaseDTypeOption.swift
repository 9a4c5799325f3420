import ArgumentParser
import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference
import MoETraining
import MoEExport

/// `--base-dtype fp32|bf16|bf16-emulated` of eval, generate and bench-train.
func parseBaseDType(_ s: String) throws -> BaseDType {
    guard let d = BaseDType(rawValue: s) else {
        throw ValidationError("--base-dtype must be one of \(BaseDType.allCases.map(\.rawValue).joined(separator: ", ")), got \(s)")
    }
    return d
}

/// The measured trade of the emulated bf16 base, on stderr, when a run opts into it.
func noteBaseDType(_ d: BaseDType) {
    if d == .bf16Emulated { FileHandle.standardError.write(Data("moe-tune: note: \(BaseDType.emulationTrade)\n".utf8)) }
}
