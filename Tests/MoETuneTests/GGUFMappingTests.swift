import XCTest
@testable import MoEFormats
@testable import MoECore

/// A GGUF base's block-format weights are the file's mapped pages, not a copy: a weight in
/// file row order (each expert a slice of its 3-D tensor) points into the one read-only
/// mapping, with the file's bytes; a row-permuted one (llama's q, k) is copied; the mapping
/// goes when the model does.
final class GGUFMappingTests: XCTestCase {
    static let q8MoE = Fixtures.dir("gguf/arch/qwen3_moe-q8_0.gguf")
    static let tinyLlama = Fixtures.dir("gguf/tiny-llama/model.gguf")

    /// Checks that `g` lies inside its owner's mapping and holds the bytes of GGUF tensor
    /// `tensor` of `file` from byte `skip` on.
    func checkMapped(_ g: GGMLWeight?, _ tensor: String, skip: Int = 0, in file: GGUFFile, _ what: String) throws {
        let g = try XCTUnwrap(g, what)
        let map = try XCTUnwrap(g.owner as? MappedFile, "\(what) is a copy, not mapped")
        XCTAssertTrue(g.data >= map.base && g.data + g.byteCount <= map.base + map.size, what)
        let t = try XCTUnwrap(file.tensor(tensor))
        XCTAssertEqual(g.data - map.base, t.offset + skip, "\(what): offset in the file")
        XCTAssertEqual(memcmp(g.data, file.bytes(of: t) + skip, g.byteCount), 0, what)
    }

    func testBlockWeightsPointIntoTheFileMapping() throws {
        let file = try GGUFFile(path: Self.q8MoE)
        let alone = mappingCount(Self.q8MoE)
        let withModel = try checkMoEModel(file)
        XCTAssertEqual(withModel, alone + 1, "the model holds one mapping of the file")
        XCTAssertEqual(mappingCount(Self.q8MoE), alone, "the model's mapping is released with it")
        withExtendedLifetime(file) {}
    }

    /// Loads the MoE fixture, checks its weights and returns the file's mapping count while
    /// the model lives (it is gone when this returns).
    func checkMoEModel(_ file: GGUFFile) throws -> Int {
        let m = try Transformer.load(directory: Self.q8MoE)
        try checkMapped(m.layers[1].q.ggml, "blk.1.attn_q.weight", in: file, "layer 1 q")
        let gate = try XCTUnwrap(m.layers[0].experts[3].gate.ggml)
        try checkMapped(gate, "blk.0.ffn_gate_exps.weight", skip: 3 * gate.byteCount, in: file, "expert 3 gate")
        let down = try XCTUnwrap(m.layers[1].experts[7].down.ggml)
        try checkMapped(down, "blk.1.ffn_down_exps.weight", skip: 7 * down.byteCount, in: file, "expert 7 down")
        XCTAssertTrue((m.layers[0].q.ggml?.owner as? MappedFile) === (gate.owner as? MappedFile), "one mapping")
        return mappingCount(Self.q8MoE)
    }

    /// Rows that llama.cpp permuted (llama's q and k) are re-laid out, so copied; the rest mapped.
    func testPermutedRowsAreCopied() throws {
        let file = try GGUFFile(path: Self.tinyLlama)
        let m = try Transformer.load(directory: Self.tinyLlama)
        XCTAssertEqual(m.layers[0].q.ggml?.isMapped, false)
        try checkMapped(m.layers[0].mlp?.down.ggml, "blk.0.ffn_down.weight", in: file, "layer 0 down")
    }

    /// Mappings of `path` in /proc/self/maps (one line per mapped range; a file mapped once
    /// in full is one line).
    func mappingCount(_ path: String) -> Int {
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        // Read to the end in a loop: /proc files report size 0, and a one-shot read of a long
        // maps file (a process that has run hundreds of tests) can come back cut short.
        let data = FileHandle(forReadingAtPath: "/proc/self/maps")?.readDataToEndOfFile() ?? Data()
        let maps = String(decoding: data, as: UTF8.self)
        return maps.split(separator: "\n").filter { $0.hasSuffix(real) }.count
    }
}
