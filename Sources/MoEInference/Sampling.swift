import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// How the next token is chosen: greedy (temperature 0) or sampled with temperature,
/// top-k and top-p (nucleus) filtering from a seeded generator.
public struct SamplingOptions: Sendable {
    public var temperature: Double = 0
    public var topK = 0          // 0: no top-k filter
    public var topP = 1.0        // 1: no nucleus filter
    public var seed: UInt64 = 0
    public var maxNewTokens = 256

    public init() {}
}

/// Picks a token from logits [V].
public struct TokenSampler {
    public let options: SamplingOptions
    package var rng: SplitMix64
    package var order: [Int]
    package var probs: [Double]

    public init(options: SamplingOptions, vocab: Int) {
        self.options = options
        rng = SplitMix64(seed: options.seed)
        order = Array(0..<vocab)
        probs = Array(repeating: 0, count: vocab)
    }

    public mutating func next(_ logits: UnsafePointer<Float>, vocab v: Int) -> Int32 {
        if options.temperature <= 0 {
            // Greedy: the first index of the maximum, as torch.argmax.
            var best = 0
            for i in 1..<v where logits[i] > logits[best] { best = i }
            return Int32(best)
        }
        let u = Double(rng.next() >> 11) * 0x1.0p-53, o = options
        return probs.withUnsafeMutableBufferPointer { p in
            order.withUnsafeMutableBufferPointer { ord in
                TokenSampler.sample(logits, vocab: v, options: o, uniform: u, probs: p.baseAddress!, order: ord.baseAddress!)
            }
        }
    }

    /// Softmax at the temperature into probs, then the tokens from the most probable down
    /// (ties: the lower id first), as many as top-k and top-p keep, and the pick: the first
    /// whose running sum reaches uniform * (their total). The order comes from a heap in
    /// `order`, popped only as far as needed (the pops land at its end, the most probable
    /// last); nothing is allocated.
    static func sample(_ logits: UnsafePointer<Float>, vocab v: Int, options: SamplingOptions, uniform: Double,
                       probs p: UnsafeMutablePointer<Double>, order heap: UnsafeMutablePointer<Int>) -> Int32 {
        let t = options.temperature
        var m = -Double.infinity
        for i in 0..<v { m = max(m, Double(logits[i]) / t) }
        var sum = 0.0
        for i in 0..<v { p[i] = Foundation.exp(Double(logits[i]) / t - m); sum += p[i] }
        for i in 0..<v { p[i] /= sum; heap[i] = i }
        for s in stride(from: v / 2 - 1, through: 0, by: -1) { siftDown(heap, s, v, p) }
        // Pop k: the k-th most probable token goes to heap[v - k].
        func pop(_ k: Int) -> Int {
            (heap[0], heap[v - k]) = (heap[v - k], heap[0])
            siftDown(heap, 0, v - k, p)
            return heap[v - k]
        }
        var keep = options.topK > 0 ? min(options.topK, v) : v, acc = 0.0
        for k in 1...keep {
            acc += p[pop(k)]
            if options.topP < 1, acc >= options.topP { keep = k; break }
        }
        var total = 0.0
        for k in 1...keep { total += p[heap[v - k]] }
        var r = uniform * total
        for k in 1...keep {
            r -= p[heap[v - k]]
            if r <= 0 { return Int32(heap[v - k]) }
        }
        return Int32(heap[v - keep])
    }

    /// Whether token a comes before token b: more probable, or as probable and a lower id.
    @inline(__always)
    static func before(_ a: Int, _ b: Int, _ p: UnsafePointer<Double>) -> Bool { p[a] > p[b] || (p[a] == p[b] && a < b) }

    /// Restores the heap (the token that comes first at the root) below `root` within [0, end).
    static func siftDown(_ h: UnsafeMutablePointer<Int>, _ root: Int, _ end: Int, _ p: UnsafePointer<Double>) {
        var r = root
        while true {
            var c = 2 * r + 1
            if c >= end { return }
            if c + 1 < end, before(h[c + 1], h[c], p) { c += 1 }
            guard before(h[c], h[r], p) else { return }
            (h[r], h[c]) = (h[c], h[r])
            r = c
        }
    }
}

/// Generation loop over a Decoder: prefills the prompt as one batch, then picks tokens
/// until a stop token or the budget, calling `onToken` with each new token (for streaming).
public final class Generator {
    public let decoder: Decoder
    public let eosIds: Set<Int32>
    /// Decode exactly max_new_tokens tokens, stop tokens included (for measuring).
    public var ignoreStop = false
    /// Prompt and decode tokens and seconds of every call so far.
    public private(set) var timings = GenerationTimings()

    /// `stopIds`: the tokenizer's stop ids, added to config.json's eos ids.
    public init(model: Transformer, adapters: AdapterSet?, maxLength: Int, stopIds: Set<Int32> = [],
                products: ProductPath = .exact) {
        decoder = Decoder(model: model, adapters: adapters, maxLength: maxLength, products: products)
        eosIds = Set(model.config.eosTokenIds).union(stopIds)
    }

    /// New tokens after `prompt` (EOS not included).
    public func generate(prompt: [Int32], options: SamplingOptions, onToken: (Int32) -> Void = { _ in }) throws -> [Int32] {
        guard !prompt.isEmpty else { throw MoETuneError.invalid("the prompt is empty") }
        guard prompt.count < decoder.maxLength else {
            throw MoETuneError.invalid("the prompt has \(prompt.count) tokens; the limit is \(decoder.maxLength - 1)")
        }
        decoder.reset()
        var t0 = Date()
        var logits = try decoder.prefill(prompt)
        timings.promptSeconds += Date().timeIntervalSince(t0)
        timings.promptTokens += prompt.count
        var sampler = TokenSampler(options: options, vocab: decoder.model.config.vocabSize)
        var out: [Int32] = []
        out.reserveCapacity(min(options.maxNewTokens, decoder.maxLength))
        defer { timings.generatedTokens += out.count }
        while out.count < options.maxNewTokens {
            let next = sampler.next(logits, vocab: decoder.model.config.vocabSize)
            if !ignoreStop, eosIds.contains(next) { break }
            out.append(next)
            onToken(next)
            if decoder.length >= decoder.maxLength || out.count >= options.maxNewTokens { break }
            // Only the step is timed (not the sampling or the caller's streaming).
            t0 = Date()
            logits = try decoder.step(next)
            timings.decodeSeconds += Date().timeIntervalSince(t0)
            timings.decodedTokens += 1
        }
        return out
    }
}

extension Transformer {
    /// Greedy generation without a cache: the whole sequence runs through the batched
    /// forward pass for every new token. Slow; the reference the KV cache is tested against.
    public func greedyWithoutCache(prompt: [Int32], adapters: AdapterSet?, maxNewTokens: Int) throws -> [Int32] {
        var seq = prompt
        let state = ForwardState(config: config, batch: 1, seq: prompt.count + maxNewTokens, training: false,
                                 loraRank: adapters?.maxRank ?? 0)
        var out: [Int32] = []
        let eos = Set(config.eosTokenIds)
        while out.count < maxNewTokens {
            let batch = TokenBatch(sequences: [seq], counted: [Array(repeating: false, count: seq.count)])
            _ = try forward(batch, state: state, adapters: adapters)
            var sampler = TokenSampler(options: SamplingOptions(), vocab: config.vocabSize)
            let next = sampler.next(state.logits.pointer + (seq.count - 1) * config.vocabSize, vocab: config.vocabSize)
            if eos.contains(next) { break }
            out.append(next)
            seq.append(next)
        }
        return out
    }
}
