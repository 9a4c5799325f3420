import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoETraining
@testable import MoEExport

final class SafeTensorsTests: XCTestCase {
    func writeRaw(_ dir: String, header: String, payload: Int, name: String = "x.safetensors") -> String {
        var d = Data()
        let h = Data(header.utf8)
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { d.append(contentsOf: $0) }
        d.append(h)
        d.append(Data(count: payload))
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: d)
        return path
    }

    func testRoundTripAllFloatTypes() throws {
        let dir = try makeTempDir(self)
        let values: [Float] = [0, 1, -2.5, 0.1, 65504, -1e-3]
        var w = SafeTensorsWriter()
        w.add(.init(name: "f32", shape: [2, 3], floats: values))
        w.add(.init(name: "bf16", dtype: .bf16, shape: [6],
                    data: Data(values.flatMap { v -> [UInt8] in
                        let b = FloatConversion.floatToBF16(v); return [UInt8(b & 0xff), UInt8(b >> 8)] })))
        w.add(.init(name: "f16", dtype: .f16, shape: [6],
                    data: Data(values.flatMap { v -> [UInt8] in
                        let b = Float16(v).bitPattern; return [UInt8(b & 0xff), UInt8(b >> 8)] })))
        try w.write(to: dir + "/t.safetensors")
        let f = try SafeTensorsFile(path: dir + "/t.safetensors")
        XCTAssertEqual(try f.floatArray("f32"), values)
        XCTAssertEqual(f.tensors["f32"]!.offset % 4, 0, "writer must align data")
        let bf = try f.floatArray("bf16")
        let hf = try f.floatArray("f16")
        for (i, v) in values.enumerated() {
            XCTAssertEqual(bf[i], v, accuracy: abs(v) / 128 + 1e-30, "bf16 keeps 8 bits of mantissa")
            XCTAssertEqual(hf[i], Float(Float16(v)))
        }
        // Exact bf16 bit patterns: 1.0 = 0x3F80, -2.5 = 0xC020.
        XCTAssertEqual(FloatConversion.floatToBF16(1.0), 0x3F80)
        XCTAssertEqual(FloatConversion.bf16ToFloat(0xC020), -2.5)
    }

    func testMissingFile() throws {
        assertMoETuneError(try SafeTensorsFile(path: "/nonexistent/m.safetensors"), contains: ["/nonexistent/m.safetensors", "not found"])
    }

    func testTruncatedHeader() throws {
        let dir = try makeTempDir(self)
        let path = dir + "/short.safetensors"
        FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3]))
        assertMoETuneError(try SafeTensorsFile(path: path), contains: [path, "truncated"])
        let path2 = writeRaw(dir, header: "{\"a\":", payload: 0, name: "h.safetensors")
        // Claims a longer header than the file holds.
        var d = try Data(contentsOf: URL(fileURLWithPath: path2))
        d.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1000).littleEndian) { Data($0) })
        try d.write(to: URL(fileURLWithPath: path2))
        assertMoETuneError(try SafeTensorsFile(path: path2), contains: [path2, "truncated"])
    }

    func testOffsetsPastEndOfFile() throws {
        let dir = try makeTempDir(self)
        let path = writeRaw(dir, header: #"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#, payload: 32)
        assertMoETuneError(try SafeTensorsFile(path: path), contains: [path, "'w'", "past the end"])
    }

    func testShapeDisagreesWithOffsets() throws {
        let dir = try makeTempDir(self)
        let path = writeRaw(dir, header: #"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,32]}}"#, payload: 32)
        assertMoETuneError(try SafeTensorsFile(path: path), contains: [path, "'w'", "needs 64 bytes"])
    }

    func testUnknownDType() throws {
        let dir = try makeTempDir(self)
        let path = writeRaw(dir, header: #"{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}"#, payload: 4)
        assertMoETuneError(try SafeTensorsFile(path: path), contains: [path, "unsupported dtype F8_E4M3"])
    }

    func testHeaderNotJSON() throws {
        let dir = try makeTempDir(self)
        let path = writeRaw(dir, header: "not json", payload: 0)
        assertMoETuneError(try SafeTensorsFile(path: path), contains: [path, "not a JSON object"])
    }
}
