import XCTest
@testable import MoECore
@testable import MoEInference

/// The terminal's expert table: one column per expert up to 16, a per-layer summary above.
final class ExpertTableTests: XCTestCase {
    /// Layer 0 of 128 experts, top-2 over 100 tokens: expert 5 takes 50 assignments, 7 takes
    /// 30, 9 and 11 take 10 each; the rest none. Layer 1 routed nothing.
    func wide() -> RoutingStatistics {
        let s = RoutingStatistics(layers: 2, experts: 128, k: 2)
        var v = s.flattened()
        v[0] = 100                                     // tokens[0]
        for (e, n) in [(5, 50.0), (7, 30), (9, 10), (11, 10)] { v[2 + e] = n }   // selected[0][e]
        v[2 + 2 * 128 + 0] = 4                         // dropped[0]
        let entropyAt = 2 + 2 * 128 + 2 + 2 * 128
        v[entropyAt] = 150                             // entropySum[0]: 1.5 a token
        s.load(flattened: v)
        return s
    }

    func testWideTablesBecomeOneSummaryLineALayer() {
        let text = expertTable(wide())
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 4, text)
        XCTAssertTrue(lines[0].hasPrefix("layer  max/mean"), text)
        // 50 of 200 assignments = 25% against a mean of 1/128: max/mean 32.
        XCTAssertTrue(lines[1].contains("32.00"), lines[1])
        XCTAssertTrue(lines[1].contains("1.500"), "entropy: \(lines[1])")
        XCTAssertTrue(lines[1].contains("2.0%"), "dropped 4 of 200: \(lines[1])")
        XCTAssertTrue(lines[1].contains("   124  "), "idle experts: \(lines[1])")
        XCTAssertTrue(lines[1].hasSuffix("5: 25.0, 7: 15.0, 9: 5.0"), "top 3, ties to the lower id: \(lines[1])")
        XCTAssertTrue(lines[2].contains("no routed tokens"), lines[2])
        XCTAssertTrue(lines[3].hasPrefix("128 experts a layer"), lines[3])
        XCTAssertTrue(lines.allSatisfy { $0.count < 100 }, "every line fits a terminal")
    }

    func testNarrowTablesKeepAColumnPerExpert() {
        let s = RoutingStatistics(layers: 1, experts: 4, k: 1)
        var v = s.flattened()
        v[0] = 10; v[1] = 6; v[2] = 4
        s.load(flattened: v)
        let lines = expertTable(s).split(separator: "\n")
        XCTAssertTrue(lines[0].hasPrefix("layer     0    1    2    3"), String(lines[0]))
        XCTAssertTrue(lines[1].contains(" 60.0 40.0  0.0  0.0"), String(lines[1]))
    }
}
