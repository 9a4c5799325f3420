import Foundation
import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Paths of the committed fixtures written by scripts/make_fixtures.py.
enum Fixtures {
    static let root: String = {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        return here.appendingPathComponent("Fixtures").path
    }()

    static func dir(_ name: String) -> String { root + "/" + name }

    /// reference.safetensors of a fixture model.
    static func reference(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: dir(name) + "/reference.safetensors")
    }

    static func referenceJSON(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir(name) + "/reference.json"))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }
}

extension SafeTensorsFile {
    /// Any numeric tensor as [Float] (tests only).
    func floatArray(_ name: String) throws -> [Float] {
        guard let info = tensors[name] else { throw MoETuneError.file(path: path, message: "no tensor \(name)") }
        let bytes = self.bytes(of: info)
        switch info.dtype {
        case .i32: return (0..<info.count).map { Float(bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        case .i64: return (0..<info.count).map { Float(bytes.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        case .u8: return (0..<info.count).map { Float(bytes[$0]) }
        default:
            var out = [Float](repeating: 0, count: info.count)
            _ = out.withUnsafeMutableBufferPointer { FloatConversion.toFloat(bytes.baseAddress!, dtype: info.dtype, count: info.count, into: $0.baseAddress!) }
            return out
        }
    }

    func intArray(_ name: String) throws -> [Int32] { try floatArray(name).map { Int32($0) } }

    func shape(_ name: String) -> [Int] { tensors[name]?.shape ?? [] }
}

/// A fresh temporary folder removed at the end of the test.
func makeTempDir(_ test: XCTestCase) throws -> String {
    let dir = NSTemporaryDirectory() + "moe-tune-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}

/// Asserts that `body` throws a MoETuneError whose one-line message contains every
/// fragment (typically the file name and the line or key).
func assertMoETuneError(_ body: @autoclosure () throws -> Any, contains fragments: [String],
                        file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
    } catch let error as MoETuneError {
        let text = error.description
        XCTAssertFalse(text.contains("\n"), "error must be one line: \(text)", file: file, line: line)
        for f in fragments {
            XCTAssertTrue(text.contains(f), "error '\(text)' does not mention '\(f)'", file: file, line: line)
        }
    } catch {
        XCTFail("expected MoETuneError, got \(error)", file: file, line: line)
    }
}

/// Copies a fixture model folder into a temp dir so a test can damage it.
func copyFixture(_ name: String, _ test: XCTestCase) throws -> String {
    let dst = try makeTempDir(test) + "/" + name
    try FileManager.default.copyItem(atPath: Fixtures.dir(name), toPath: dst)
    return dst
}

/// The run options `environment` sets (RunOptions' one builder; its warnings dropped).
func runOptions(_ environment: [String: String]) throws -> RunOptions {
    var warnings: [String] = []
    return try RunOptions(environment: environment, warnings: &warnings)
}
