import XCTest
@testable import MoEFormats
@testable import MoEText
@testable import MoECore
@testable import MoEData
@testable import MoEInference
@testable import MoEServe

/// The server's parts without HTTP (scripts/check_serve.sh checks it over HTTP with curl):
/// request parsing and its errors, the text stream (stop strings, unfinished characters), the
/// batched generator's incremental use, and the engine against one-at-a-time decoding.
final class ServeTests: XCTestCase {
    // MARK: requests

    func testRequestDefaultsAndFields() throws {
        let r = try CompletionRequest.parse(#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, chat: true)
        XCTAssertEqual(r.model, "m")
        XCTAssertEqual(r.temperature, 1); XCTAssertEqual(r.topP, 1); XCTAssertNil(r.maxTokens); XCTAssertFalse(r.stream)
        let s = try CompletionRequest.parse(#"""
            {"prompt":"x","max_tokens":5,"max_completion_tokens":7,"temperature":0,"top_p":0.5,"top_k":3,"seed":-1,
             "stop":["a",""],"stream":true,"stream_options":{"include_usage":true},"n":1,"user":"ignored"}
            """#, chat: false)
        XCTAssertEqual(s.maxTokens, 7, "max_completion_tokens wins over the older max_tokens")
        XCTAssertEqual(s.temperature, 0); XCTAssertEqual(s.topP, 0.5); XCTAssertEqual(s.topK, 3)
        XCTAssertEqual(s.seed, UInt64.max); XCTAssertEqual(s.stop, ["a"]); XCTAssertTrue(s.stream); XCTAssertTrue(s.includeUsage)
        guard case let .text(p) = s.input else { return XCTFail("a text prompt") }
        XCTAssertEqual(p, "x")
    }

    func testContentPartsBecomeText() throws {
        let r = try CompletionRequest.parse(
            #"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#, chat: true)
        guard case let .chat(m) = r.input else { return XCTFail("a chat") }
        XCTAssertEqual(m[0].content, "ab")
    }

    func testBadRequestsNameTheField() {
        let cases: [(String, Bool, String?)] = [
            (#"{"prompt": "x","#, false, nil),
            (#"[1]"#, false, nil),
            (#"{"prompt": ""}"#, false, "prompt"),
            (#"{"prompt": ["a", "b"]}"#, false, "prompt"),
            (#"{"messages": []}"#, true, "messages"),
            (#"{"messages": [{"content": "x"}]}"#, true, "messages"),
            (#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, true, "messages"),
            (#"{"prompt": "x", "temperature": "hot"}"#, false, "temperature"),
            (#"{"prompt": "x", "temperature": 3}"#, false, "temperature"),
            (#"{"prompt": "x", "top_p": 0}"#, false, "top_p"),
            (#"{"prompt": "x", "max_tokens": 0}"#, false, "max_tokens"),
            (#"{"prompt": "x", "max_tokens": 1.5}"#, false, "max_tokens"),
            (#"{"prompt": "x", "n": 2}"#, false, "n"),
            (#"{"prompt": "x", "stop": [1]}"#, false, "stop"),
            (#"{"prompt": "x", "stop": ["a","b","c","d","e"]}"#, false, "stop"),
            (#"{"prompt": "x", "stream": "yes"}"#, false, "stream"),
            (#"{"prompt": "x", "logprobs": true}"#, false, "logprobs"),
            (#"{"prompt": "x", "model": 3}"#, false, "model"),
        ]
        for (body, chat, param) in cases {
            XCTAssertThrowsError(try CompletionRequest.parse(body, chat: chat), body) { e in
                let e = e as! APIError
                XCTAssertEqual(e.status, 400, body)
                XCTAssertEqual(e.type, "invalid_request_error", body)
                XCTAssertEqual(e.param, param, body)
                XCTAssertFalse(e.message.isEmpty)
            }
        }
    }

    // MARK: text stream

    /// A decoder of single-character tokens; token 0 is half of a two-token character.
    func decodeChars(_ ids: [Int32]) -> String {
        var s = ""
        var i = 0
        while i < ids.count {
            if ids[i] == 0 { s += i + 1 < ids.count && ids[i + 1] == 1 ? "é" : "\u{FFFD}"; i += 2; continue }
            s += String(UnicodeScalar(UInt8(ids[i])))
            i += 1
        }
        return s
    }

    func ids(_ s: String) -> [Int32] { s.unicodeScalars.map { Int32($0.value) } }

    func testStopStringEndsTheTextBeforeIt() {
        var t = TextStream(stops: ["END", "xyz"], decode: decodeChars)
        var sent = ""
        for id in ids("abcENxENDmore") { sent += t.add(id) }
        XCTAssertEqual(sent, "abcENx")
        XCTAssertTrue(t.stopped)
        XCTAssertEqual(t.finish(), "")
        XCTAssertEqual(t.text, "abcENx")
    }

    func testPartialStopIsHeldThenSentAtTheEnd() {
        var t = TextStream(stops: ["END"], decode: decodeChars)
        var pieces: [String] = []
        for id in ids("abEN") { pieces.append(t.add(id)) }
        XCTAssertEqual(pieces, ["a", "b", "", ""], "EN may become END: held")
        XCTAssertEqual(t.finish(), "EN")
        XCTAssertFalse(t.stopped)
        XCTAssertEqual(t.text, "abEN")
    }

    func testUnfinishedCharacterIsHeld() {
        var t = TextStream(stops: [], decode: decodeChars)
        XCTAssertEqual(t.add(Int32(UInt8(ascii: "a"))), "a")
        XCTAssertEqual(t.add(0), "", "half a character")
        XCTAssertEqual(t.add(1), "é")
        XCTAssertEqual(t.text, "aé")
    }

    // MARK: batched generator and engine

    func requests(_ vocab: Int) -> [GenerationRequest] {
        (0..<6).map { i in
            var o = SamplingOptions()
            o.maxNewTokens = 5 + i
            if i % 2 == 1 { o.temperature = 0.8; o.seed = UInt64(i) }
            return GenerationRequest(prompt: [1] + (0..<(3 + i)).map { Int32(7 + ($0 * 31 + i * 17) % (vocab - 8)) }, options: o)
        }
    }

    func testSubmitWhileRunningEqualsOneRun() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let reqs = requests(model.config.vocabSize)
        var all: [Int: GenerationResult] = [:]
        try BatchGenerator(model: model, adapters: nil, maxLength: 32, parallel: 2).run(reqs) { all[$0] = $1 }
        // The same requests arriving one by one while others decode; one cancelled.
        let g = BatchGenerator(model: model, adapters: nil, maxLength: 32, parallel: 2)
        var got: [Int: GenerationResult] = [:]
        try g.submit(reqs[0], id: 0)
        try g.submit(reqs[5], id: 99)
        var next = 1
        while g.hasWork || next < reqs.count {
            if next < reqs.count { try g.submit(reqs[next], id: next); next += 1 }
            if next == 3 { g.cancel(id: 99); XCTAssertFalse(g.owns(99)) }
            try g.advance { got[$0] = $1 }
        }
        XCTAssertNil(got[99], "a cancelled request reports nothing")
        XCTAssertEqual(got, all, "each sequence's tokens do not depend on when it came or who ran beside it")
    }

    func testEngineAnswersLikeTheGenerator() throws {
        let model = try Transformer.load(directory: Fixtures.dir("mixtral"))
        let adapters = try PEFTAdapter.load(directory: Fixtures.dir("train-mixtral"), model: model)
        let reqs = requests(model.config.vocabSize)
        var want: [String: [Int: GenerationResult]] = [:]
        for (name, set) in [("base", nil), ("tuned", adapters)] as [(String, AdapterSet?)] {
            try BatchGenerator(model: model, adapters: set, maxLength: 32, parallel: 3).run(reqs) { want[name, default: [:]][$0] = $1 }
        }
        let engine = Engine(model: model, adapters: ["base": nil, "tuned": adapters], maxLength: 32, parallel: 3,
                            stopIds: [], products: .exact)
        engine.start()
        let expectation = expectation(description: "all answered")
        expectation.expectedFulfillmentCount = 2 * reqs.count + 1
        let lock = NSLock()
        var got: [String: [Int: GenerationResult]] = [:]
        for name in ["base", "tuned"] {
            for (i, r) in reqs.enumerated() {
                let events = engine.submit(r, model: name).events
                Task {
                    var tokens: [Int32] = [], admitted = 0
                    for await e in events {
                        switch e {
                        case let .admitted(cached):
                            admitted += 1
                            XCTAssertTrue((0..<r.prompt.count).contains(cached), "cached \(cached) of \(r.prompt.count)")
                        case let .token(t): tokens.append(t)
                        case let .finished(res):
                            XCTAssertEqual(res.tokens, tokens, "streamed tokens are the result's")
                            lock.withLock { got[name, default: [:]][i] = res }
                        case let .failed(m): XCTFail(m)
                        }
                    }
                    XCTAssertEqual(admitted, 1, "one admission event")
                    expectation.fulfill()
                }
            }
        }
        let unknown = engine.submit(reqs[0], model: "nope").events
        Task {
            var failed = false
            for await e in unknown { if case .failed = e { failed = true } }
            XCTAssertTrue(failed, "an unknown model fails the request")
            expectation.fulfill()
        }
        wait(for: [expectation], timeout: 120)
        XCTAssertEqual(got, want)
        XCTAssertNotEqual(want["base"], want["tuned"], "the adapter changes some answer")
    }
}
