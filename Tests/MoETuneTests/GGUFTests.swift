import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

/// The GGUF container and the ggml types against llama.cpp's gguf-py
/// (scripts/make_gguf_fixtures.py). Tolerance: none — metadata values equal, dequantized
/// values equal bit for bit, quantized bytes equal byte for byte.
final class GGUFTests: XCTestCase {
    static let dir = Fixtures.dir("gguf")

    func testMetadataOfEveryValueType() throws {
        for name in ["types.gguf", "types-v2.gguf"] {
            let f = try GGUFFile(path: Self.dir + "/" + name)
            XCTAssertEqual(f.version, name == "types.gguf" ? 3 : 2)
            let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.dir + "/types-metadata.json"))) as! [String: [String: Any]]
            XCTAssertEqual(expected.count, 16)
            for (key, e) in expected {
                guard let v = f.value(key) else { XCTFail("\(name): \(key) missing"); continue }
                XCTAssertEqual(Int(v.type.rawValue), (e["type"] as! NSNumber).intValue, key)
                XCTAssertTrue(Self.same(v, e["value"]!), "\(name): \(key) = \(v), gguf-py read \(e["value"]!)")
            }
            XCTAssertEqual(try f.string("general.architecture"), "test")
            XCTAssertEqual(f.alignment, 32)
            if case .array(.array, let outer) = f.value("test.array.nested")! {
                XCTAssertEqual(outer.count, 2)
            } else { XCTFail("nested array not read as an array of arrays") }
        }
    }

    /// A value read by moe-tune against the JSON of gguf-py's reading.
    static func same(_ v: GGUFValue, _ j: Any) -> Bool {
        switch v {
        case .float32(let x): return x == Float((j as! NSNumber).doubleValue)
        case .float64(let x): return x == (j as! NSNumber).doubleValue
        case .bool(let b): return b == (j as! NSNumber).boolValue
        case .string(let s): return s == j as? String
        case .uint64(let x): return String(x) == "\(j)"
        case .array(_, let items):
            guard let list = j as? [Any], list.count == items.count else { return false }
            return zip(items, list).allSatisfy { same($0, $1) }
        default: return v.integer.map { String($0) } == "\(j)"
        }
    }

    func testEveryTypeDequantizesExactlyAsGGUFPy() throws {
        let f = try GGUFFile(path: Self.dir + "/types.gguf")
        let expected = try GGUFFile(path: Self.dir + "/types-expected.gguf")
        let names = Set(f.tensors.map(\.type))
        XCTAssertEqual(names, Set(GGMLType.allCases), "the fixture holds every supported type")
        for t in f.tensors {
            XCTAssertEqual(t.shape, [3, 256])
            let ours = try f.floats(t.name)
            let ref = try expected.floats(t.name)
            XCTAssertEqual(expected.tensor(t.name)!.type, .f32)
            let diff = zip(ours, ref).filter { $0.bitPattern != $1.bitPattern }.count
            XCTAssertEqual(diff, 0, "\(t.name): \(diff) of \(ref.count) values differ from gguf-py")
            XCTAssertGreaterThan(Set(ref).count, 16, "\(t.name): the fixture is not trivial")
        }
    }

    func testQuantizersMatchGGUFPyByteForByte() throws {
        let f = try GGUFFile(path: Self.dir + "/quants.gguf")
        let x = try f.floats("input")
        for type in [GGMLType.f16, .bf16, .q8_0, .q4_0] {
            let t = f.tensor("out." + type.name)!
            XCTAssertEqual(t.type, type)
            let ref = Array(UnsafeRawBufferPointer(start: f.bytes(of: t), count: t.byteCount))
            let ours = x.withUnsafeBufferPointer { GGMLQuantize.run(type, $0.baseAddress!, count: x.count) }
            XCTAssertEqual(ours.count, ref.count)
            let firstDiff = zip(ours, ref).enumerated().first { $0.element.0 != $0.element.1 }
            XCTAssertNil(firstDiff, "\(type.name): first differing byte \(String(describing: firstDiff))")
        }
    }

    func testWriterRoundTrip() throws {
        let dir = try makeTempDir(self)
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("a.list", .array(.string, [.string("x"), .string("yz")]))
        w.set("a.f", .float32(1.5))
        let x: [Float] = (0..<128).map { Float($0) * 0.25 - 7 }
        for type in GGMLQuantize.writable {
            x.withUnsafeBufferPointer { w.add("w." + type.name, shape: [2, 64], floats: $0.baseAddress!, as: type) }
        }
        try w.write(to: dir + "/out.gguf")
        let f = try GGUFFile(path: dir + "/out.gguf")
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.keys, ["general.architecture", "a.list", "a.f"])
        XCTAssertEqual(try f.strings("a.list"), ["x", "yz"])
        XCTAssertEqual(try f.double("a.f"), 1.5)
        for type in GGMLQuantize.writable {
            let t = f.tensor("w." + type.name)!
            XCTAssertEqual(t.shape, [2, 64]); XCTAssertEqual(t.type, type)
            XCTAssertEqual(t.offset % 32, 0)
            let back = try f.floats(t.name)
            // Bound of the rounding: half a step of the block's scale (q8_0: amax / 127;
            // q4_0: amax / 8, a full step at the clipped end), f16/bf16 relative rounding.
            for (i, (a, b)) in zip(back, x).enumerated() {
                let blockMax = x[(i / 32 * 32)..<(i / 32 * 32 + 32)].map(abs).max()!
                let tol: Float = switch type {
                case .q8_0: blockMax / 127 * 0.5 + blockMax / 1024   // + the f16 rounding of d
                case .q4_0: blockMax / 8 * 1.001
                case .f16: abs(b) / 1024
                case .bf16: abs(b) / 128
                default: 0
                }
                XCTAssertLessThanOrEqual(abs(a - b), tol, "\(type.name) value \(i)")
            }
        }
    }

    // MARK: Bad input: one-line errors naming the problem.

    /// A small valid file: metadata and one F32 tensor "weird.tensor" [2, 32].
    func smallFile(_ dir: String) throws -> [UInt8] {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(1))
        let x = [Float](repeating: 1, count: 64)
        x.withUnsafeBufferPointer { w.add("weird.tensor", shape: [2, 32], floats: $0.baseAddress!, as: .f32) }
        return Array(w.serialized())
    }

    func write(_ bytes: [UInt8], _ dir: String) -> String {
        let p = dir + "/bad.gguf"
        FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    /// Offset of the type field of the tensor info of "weird.tensor".
    func typeFieldOffset(_ b: [UInt8]) -> Int {
        let name = Array("weird.tensor".utf8)
        let i = (0..<(b.count - name.count)).first { Array(b[$0..<($0 + name.count)]) == name }!
        return i + name.count + 4 + 2 * 8
    }

    func testBadInputIsOneLineError() throws {
        let dir = try makeTempDir(self)
        let good = try smallFile(dir)
        XCTAssertNoThrow(try GGUFFile(path: write(good, dir)))
        var b = good; b[0] = UInt8(ascii: "X")
        assertMoETuneError(try GGUFFile(path: write(b, dir)), contains: ["bad.gguf", "not a GGUF file"])
        b = good; b[4] = 1
        assertMoETuneError(try GGUFFile(path: write(b, dir)), contains: ["bad.gguf", "version 1"])
        assertMoETuneError(try GGUFFile(path: write(Array(good[0..<60]), dir)), contains: ["bad.gguf", "truncated"])
        assertMoETuneError(try GGUFFile(path: write(Array(good.dropLast(100)), dir)), contains: ["'weird.tensor'", "past the end"])
        b = good; b[typeFieldOffset(b)] = 10
        assertMoETuneError(try GGUFFile(path: write(b, dir)), contains: ["'weird.tensor'", "Q2_K", "not supported"])
        b = good; b[typeFieldOffset(b)] = 77
        assertMoETuneError(try GGUFFile(path: write(b, dir)), contains: ["'weird.tensor'", "unknown type 77"])
        // A huge array length or string length must not allocate or read past the end.
        var w = GGUFWriter(); w.set("x", .array(.uint32, [.uint32(1)]))
        var s = Array(w.serialized())
        let lenAt = 24 + 8 + 1 + 4 + 4     // header, key "x", value type, element type
        for k in 0..<8 { s[lenAt + k] = 0xFF }
        assertMoETuneError(try GGUFFile(path: write(s, dir)), contains: ["'x'", "elements"])
        // Metadata of the wrong type, where a loader asks for it.
        let f = try GGUFFile(path: write(good, dir))
        assertMoETuneError(try f.string("llama.block_count"), contains: ["'llama.block_count'", "must be a string", "uint32"])
        assertMoETuneError(try f.strings("general.architecture"), contains: ["'general.architecture'", "array of strings"])
    }

    /// Every truncation of a valid file is an error, never a crash.
    func testEveryTruncationFails() throws {
        let dir = try makeTempDir(self)
        let good = try smallFile(dir)
        for n in stride(from: 0, to: good.count - 1, by: 7) {
            XCTAssertThrowsError(try GGUFFile(path: write(Array(good[0..<n]), dir)), "prefix of \(n) bytes")
        }
    }
}
