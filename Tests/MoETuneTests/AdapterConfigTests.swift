import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Adapters that used to load quietly with wrong numbers are refused, naming the file and
/// the field: lora_alpha a string or missing, r disagreeing with the tensors, an orphan
/// lora_B, an alpha_pattern that is not a regular expression, target_modules matching nothing.
final class AdapterConfigTests: XCTestCase {
    let source = Fixtures.dir("train-mixtral")

    /// A copy of the fixture adapter with its config edited (and tensors filtered).
    func adapter(_ dir: String, edit: (inout [String: Any]) -> Void, dropTensor: ((String) -> Bool)? = nil) throws -> String {
        let out = dir + "/adapter-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: source + "/adapter_config.json"))) as! [String: Any]
        edit(&cfg)
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: out + "/adapter_config.json"))
        if let dropTensor {
            let file = try SafeTensorsFile(path: source + "/adapter_model.safetensors")
            var w = SafeTensorsWriter()
            for (name, info) in file.tensors where !dropTensor(name) {
                w.add(.init(name: name, shape: info.shape, floats: try file.floatArray(name)))
            }
            try w.write(to: out + "/adapter_model.safetensors")
        } else {
            try FileManager.default.copyItem(atPath: source + "/adapter_model.safetensors", toPath: out + "/adapter_model.safetensors")
        }
        return out
    }

    func testSilentFallbacksAreErrors() throws {
        let dir = try makeTempDir(self)
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        func refuse(_ fragments: [String], edit: (inout [String: Any]) -> Void, dropTensor: ((String) -> Bool)? = nil,
                    line: UInt = #line) throws {
            let a = try adapter(dir, edit: edit, dropTensor: dropTensor)
            assertMoETuneError(try PEFTAdapter.load(directory: a, model: model), contains: fragments, line: line)
        }
        try refuse(["adapter_config.json", "lora_alpha", "not a number"]) { $0["lora_alpha"] = "16" }
        try refuse(["adapter_config.json", "lora_alpha", "missing"]) { $0["lora_alpha"] = nil }
        try refuse(["adapter_config.json", "r:", "has rank 4", "gives 8"]) { $0["r"] = 8 }
        try refuse(["adapter_config.json", "alpha_pattern", "not a valid regular expression"]) { $0["alpha_pattern"] = ["q_proj[": 2] }
        try refuse(["adapter_config.json", "alpha_pattern", "not a number"]) { $0["alpha_pattern"] = ["q_proj": "2"] }
        // A rank that Int() cannot hold trapped (a fuzzing find); a fraction is no rank either.
        try refuse(["adapter_config.json", "rank_pattern", "not a rank"]) { $0["rank_pattern"] = [".*": 1e300] }
        try refuse(["adapter_config.json", "rank_pattern", "not a rank"]) { $0["rank_pattern"] = [".*": 4.5] }
        try refuse(["adapter_config.json", "rank_pattern", "not a rank"]) { $0["rank_pattern"] = [".*": 0] }
        try refuse(["adapter_config.json", "target_modules", "match none"]) { $0["target_modules"] = ["nothing_proj"] }
        try refuse(["adapter_model.safetensors", "lora_B.weight' has no lora_A"], edit: { _ in },
                   dropTensor: { $0.contains("layers.0.self_attn.q_proj.lora_A") })
        // The unedited copy still loads, and a rank_pattern that names the module's real rank is honoured.
        XCTAssertNoThrow(try PEFTAdapter.load(directory: try adapter(dir, edit: { _ in }), model: model))
        XCTAssertNoThrow(try PEFTAdapter.load(directory: try adapter(dir, edit: { $0["r"] = 8; $0["rank_pattern"] = [".*": 4] }), model: model))
    }
}
