import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// Adapters moe-tune writes for peft 0.21 on transformers 5, against the peft-out-NAME
/// fixtures of scripts/make_peft_out_fixtures.py: peft's own save_pretrained of the same
/// adapter in transformers 5's layout (fused experts and routers, shared experts and dense
/// MLPs as `target_parameters`), whose logits the script checked against the base model
/// with every per-expert delta added (1e-4) and, where peft converts per-expert adapters
/// itself, against that conversion (equal).
extension FamilyTests {
    static let peftOutFamilies = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "deepseek_v2"]

    func adapterConfig(_ dir: String) throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/adapter_config.json"))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The per-expert adapter moe-tune wrote before (legacy/), read and written again, is peft's
    /// file: the same LoRA tensors (names, shapes, values exactly) and the same target_modules,
    /// target_parameters, rank_pattern, alpha_pattern, r and lora_alpha.
    func testWrittenAdapterIsPeftsFusedLayout() throws {
        for name in Self.peftOutFamilies {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            let dir = Fixtures.dir("peft-out-" + name)
            let adapters = try PEFTAdapter.load(directory: dir + "/legacy", model: model)
            let out = try makeTempDir(self) + "/adapter"
            try PEFTAdapter.save(adapters, family: model.family, baseModel: name, to: out)
            let ours = try SafeTensorsFile(path: out + "/adapter_model.safetensors")
            let peft = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
            // peft also stores lm_head.base_layer.weight (the frozen weight), which no loader needs.
            let peftKeys = Set(peft.tensors.keys.filter { $0.contains(".lora_") })
            XCTAssertEqual(Set(ours.tensors.keys), peftKeys, name)
            for key in peftKeys.sorted() where ours.tensors[key] != nil {
                XCTAssertEqual(ours.tensors[key]!.shape, peft.tensors[key]!.shape, key)
                XCTAssertTrue(try ours.floatArray(key) == peft.floatArray(key), "\(name) \(key): values differ")
            }
            let oc = try adapterConfig(out), pc = try adapterConfig(dir)
            for key in ["target_modules", "target_parameters"] {
                XCTAssertEqual(oc[key] as? [String], pc[key] as? [String], "\(name) \(key)")
            }
            for key in ["rank_pattern", "alpha_pattern"] {
                let o = (oc[key] as? [String: NSNumber])?.mapValues(\.doubleValue)
                let p = (pc[key] as? [String: NSNumber])?.mapValues(\.doubleValue)
                XCTAssertEqual(o, p, "\(name) \(key)")
            }
            XCTAssertEqual((oc["r"] as? NSNumber)?.intValue, (pc["r"] as? NSNumber)?.intValue, name)
            XCTAssertEqual((oc["lora_alpha"] as? NSNumber)?.doubleValue, (pc["lora_alpha"] as? NSNumber)?.doubleValue, name)
            print("peft-out \(name): \(ours.tensors.count) tensors equal to peft's, targets \(oc["target_parameters"] ?? [])")
        }
    }

    /// peft's file and moe-tune's rewrite of the legacy adapter both read back into moe-tune give
    /// peft's logits within 1e-4 and its loss within 1e-5 relative; the rewrite reads back as the
    /// legacy adapters exactly (block-diagonal gate_up split back into gate and up, same scales).
    func testPeftOutAdaptersReadBack() throws {
        for name in Self.peftOutFamilies {
            let model = try Transformer.load(directory: Fixtures.dir(name))
            let dir = Fixtures.dir("peft-out-" + name)
            let legacy = try PEFTAdapter.load(directory: dir + "/legacy", model: model)
            let out = try makeTempDir(self) + "/adapter"
            try PEFTAdapter.save(legacy, family: model.family, baseModel: name, to: out)
            let ref = try SafeTensorsFile(path: dir + "/batch.safetensors")
            let (tb, mask) = try batch(ref)
            let refLoss = Double(try ref.floatArray("loss")[0])
            for (label, folder) in [("peft's", dir), ("moe-tune's", out)] {
                let adapters = try PEFTAdapter.load(directory: folder, model: model)
                let state = ForwardState(config: model.config, batch: tb.batch, seq: tb.seq, training: false, loraRank: adapters.maxRank)
                let (sum, count) = try model.forward(tb, state: state, adapters: adapters)
                let loss = sum / Double(count)
                let diff = maxDiff(state.logits.pointer, try ref.floatArray("logits"), mask: mask, v: model.config.vocabSize)
                print("peft-out \(name), \(label) adapter: logits max |diff| \(diff), loss \(loss) vs peft \(refLoss)")
                XCTAssertLessThanOrEqual(diff, 1e-4, "\(name) \(label)")
                XCTAssertLessThanOrEqual(abs(loss - refLoss) / refLoss, 1e-5, "\(name) \(label)")
            }
            let back = try PEFTAdapter.load(directory: out, model: model)
            let byModule = Dictionary(uniqueKeysWithValues: back.all.map { ($0.module, $0) })
            XCTAssertEqual(Set(legacy.all.map(\.module)), Set(byModule.keys), name)
            for x in legacy.all {
                guard let y = byModule[x.module] else { continue }
                XCTAssertEqual(x.rank, y.rank, x.module)
                XCTAssertEqual(x.scale, y.scale, x.module)
                XCTAssertTrue(Array(UnsafeBufferPointer(start: x.a, count: x.rank * x.inFeatures)) ==
                              Array(UnsafeBufferPointer(start: y.a, count: y.rank * y.inFeatures)), "\(x.module): A differs")
                XCTAssertTrue(Array(UnsafeBufferPointer(start: x.b, count: x.rank * x.outFeatures)) ==
                              Array(UnsafeBufferPointer(start: y.b, count: y.rank * y.outFeatures)), "\(x.module): B differs")
            }
        }
    }
}
