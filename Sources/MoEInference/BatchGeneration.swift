import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData

/// One sequence to generate: its prompt and how to pick its tokens.
public struct GenerationRequest: Sendable {
    public var prompt: [Int32]
    public var options: SamplingOptions

    public init(prompt: [Int32], options: SamplingOptions) {
        self.prompt = prompt
        self.options = options
    }
}

/// What a request produced.
public struct GenerationResult: Sendable, Equatable {
    /// New tokens (a stop token not included, unless the generator ignores stops).
    public var tokens: [Int32]
    /// Why it ended: a stop token, the token budget, or the cache's length.
    public var reason: FinishReason
    /// The stop token that ended it (reason stop), not in `tokens`.
    public var stopToken: Int32? = nil

    public enum FinishReason: String, Sendable { case stop, length }
}

/// Token counts and seconds of a run, as llama.cpp reports them: the prompt (prefill) and
/// the generated tokens (decoding steps) apart.
public struct GenerationTimings: Sendable {
    public var promptTokens = 0
    public var promptSeconds = 0.0
    /// Prompt tokens not computed: copied from a prefix another prompt shared, or kept from a
    /// finished sequence's cache (BatchGenerator.reuseFinished). promptTokens counts them too.
    public var sharedPromptTokens = 0
    /// New tokens, the first of each sequence (picked from the prompt's logits) included.
    public var generatedTokens = 0
    /// Tokens fed through decoding steps, and the seconds of those steps alone (llama.cpp's
    /// "eval time": the prompt's and the sampling's time apart).
    public var decodedTokens = 0
    public var decodeSeconds = 0.0

    public init() {}
    public var promptTokensPerSecond: Double { promptSeconds > 0 ? Double(promptTokens) / promptSeconds : 0 }
    /// Decoding steps' tokens per second (0 when no step ran).
    public var tokensPerSecond: Double { decodeSeconds > 0 ? Double(decodedTokens) / decodeSeconds : 0 }
}

/// Continuous batching over a Decoder with several slots: up to `parallel` sequences decode
/// together, each step multiplying all their rows against each weight once; a sequence that
/// ends frees its slot for the next waiting request, whose prompt is prefilled as one batch.
/// Each sequence has its own sampler (its own seed) and stop condition, so its tokens do not
/// depend on which others run beside it (up to the products' rounding).
public final class BatchGenerator {
    public let decoder: Decoder
    public let stopIds: Set<Int32>
    /// Decode exactly max_new_tokens tokens, stop tokens included (for measuring).
    public var ignoreStop = false
    /// Prefill the prefixes that prompts admitted together share once (SharedPrefix).
    public var sharePrefixes = true
    /// Keep the beginning of a finished sequence's cache for a new prompt that starts alike
    /// (a chat's next turn: the conversation so far), as llama.cpp's server does
    /// (cache_prompt): the prompt's beginning comes from the free slot whose held tokens match
    /// it most (bestFreeSlot says which slot it runs in).
    public var reuseFinished = true
    public private(set) var timings = GenerationTimings()
    /// Called for each request as its prompt is prefilled: (request, prompt tokens it did not
    /// feed: copied from a shared prefix or kept from a finished sequence).
    public var onAdmit: ((Int, Int) -> Void)?

    private struct Active {
        let request: Int
        let prompt: [Int32]
        var sampler: TokenSampler
        var tokens: [Int32] = []
        let budget: Int
    }
    private var active: [Active?]
    /// Tokens whose keys and values a free slot still holds (its last sequence's prompt and
    /// fed tokens), for `reuseFinished`.
    private var held: [[Int32]]
    /// When each slot was last freed (a count of releases; 0: never used), for picking the
    /// slot freed longest ago.
    private var freedAt: [Int]
    private var releases = 0
    /// Submitted requests not yet in a slot, oldest first (`waitingHead` is the next).
    private var waiting: [(id: Int, request: GenerationRequest)] = []
    private var waitingHead = 0
    private let rowTokens: UnsafeMutableBufferPointer<Int32>, rowSlots: UnsafeMutableBufferPointer<Int32>
    private let vocab: Int

    /// `stopIds`: the tokenizer's stop ids, added to config.json's eos ids.
    public init(model: Transformer, adapters: AdapterSet?, maxLength: Int, parallel: Int, stopIds: Set<Int32> = [],
                products: ProductPath = .exact) {
        decoder = Decoder(model: model, adapters: adapters, maxLength: maxLength, slots: max(1, parallel), products: products)
        self.stopIds = Set(model.config.eosTokenIds).union(stopIds)
        active = Array(repeating: nil, count: decoder.slots)
        held = Array(repeating: [], count: decoder.slots)
        freedAt = Array(repeating: 0, count: decoder.slots)
        rowTokens = .allocate(capacity: decoder.slots); rowTokens.initialize(repeating: 0)
        rowSlots = .allocate(capacity: decoder.slots); rowSlots.initialize(repeating: 0)
        vocab = model.config.vocabSize
    }

    deinit { rowTokens.deallocate(); rowSlots.deallocate() }

    /// Runs every request; `onToken(request, token)` streams, `onFinish(request, result)`
    /// reports each as it ends (not in request order).
    public func run(_ requests: [GenerationRequest], onToken: (Int, Int32) -> Void = { _, _ in },
                    onFinish: (Int, GenerationResult) -> Void) throws {
        for (i, r) in requests.enumerated() { try check(r, index: i) }
        for (i, r) in requests.enumerated() { try submit(r, id: i) }
        while hasWork { try advance(onToken: onToken, onFinish: onFinish) }
    }

    /// Queues a request under the caller's `id` (a server's request number); it starts when
    /// a slot is free. Refuses an empty prompt, one that leaves no room to generate, or one
    /// with a token outside the vocabulary (its prefill would fail the requests admitted
    /// with it, which no one could then tell).
    public func submit(_ request: GenerationRequest, id: Int) throws {
        try check(request, index: id)
        if waitingHead > 64, waitingHead * 2 > waiting.count {
            waiting.removeFirst(waitingHead)
            waitingHead = 0
        }
        waiting.append((id, request))
    }

    /// Whether any request waits or runs.
    public var hasWork: Bool { waitingHead < waiting.count || active.contains { $0 != nil } }

    /// Requests in slots now.
    public var running: Int { active.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }

    /// Whether request `id` waits or runs here.
    public func owns(_ id: Int) -> Bool {
        waiting[waitingHead...].contains { $0.id == id } || active.contains { $0?.request == id }
    }

    /// Drops request `id` (its client left): out of the queue, or its slot freed for the next.
    /// Nothing is reported for it.
    public func cancel(id: Int) {
        if let i = waiting[waitingHead...].firstIndex(where: { $0.id == id }) { waiting.remove(at: i); return }
        if let slot = active.firstIndex(where: { $0?.request == id }) { release(slot: slot) }
    }

    /// One round: waiting requests into free slots (each prompt prefilled, its first token
    /// picked), then one decoding step for every running sequence.
    public func advance(onToken: (Int, Int32) -> Void = { _, _ in }, onFinish: (Int, GenerationResult) -> Void) throws {
        try admit(onToken: onToken, onFinish: onFinish)
        let n = gatherRows()
        if n == 0 { return }
        let t0 = Date()
        let logits = try decoder.step(tokens: UnsafeBufferPointer(rebasing: rowTokens[0..<n]),
                                      slots: UnsafeBufferPointer(rebasing: rowSlots[0..<n]))
        timings.decodeSeconds += Date().timeIntervalSince(t0)
        timings.decodedTokens += n
        for i in 0..<n {
            let slot = Int(rowSlots[i])
            accept(slot: slot, logits: logits + i * vocab, onToken: onToken, onFinish: onFinish)
        }
    }

    private func check(_ r: GenerationRequest, index i: Int) throws {
        guard !r.prompt.isEmpty else { throw MoETuneError.invalid("prompt \(i + 1) is empty") }
        guard r.prompt.count < decoder.maxLength else {
            throw MoETuneError.invalid("prompt \(i + 1) has \(r.prompt.count) tokens; the limit is \(decoder.maxLength - 1)")
        }
        // Refused alone here, not with the batch it would be prefilled in.
        if let bad = r.prompt.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw MoETuneError.invalid("prompt \(i + 1): token id \(bad) is outside the model's vocabulary of \(vocab)")
        }
    }

    /// Fills free slots with waiting requests: their prompts prefilled together (one batch of
    /// rows), then each one's first token. A request that ends at its first token frees its
    /// slot for the next round.
    private func admit(onToken: (Int, Int32) -> Void, onFinish: (Int, GenerationResult) -> Void) throws {
        guard waitingHead < waiting.count, active.contains(where: { $0 == nil }) else { return }
        var slots: [Int] = [], prompts: [[Int32]] = [], kept: [Int] = []
        var free = (0..<decoder.slots).filter { active[$0] == nil }
        let t0 = Date()
        let logits: UnsafeMutablePointer<Float>
        do {
            while !free.isEmpty, waitingHead < waiting.count {
                let (id, r) = waiting[waitingHead]
                waitingHead += 1
                let (i, source, keep) = bestFreeSlot(for: r.prompt, among: free)
                let slot = free.remove(at: i)
                if keep > 0 { try decoder.copyPrefix(from: source, to: slot, count: keep) } else { decoder.reset(slot: slot) }
                held[slot] = []
                active[slot] = Active(request: id, prompt: r.prompt, sampler: TokenSampler(options: r.options, vocab: vocab),
                                      budget: r.options.maxNewTokens)
                slots.append(slot)
                prompts.append(r.prompt)
                kept.append(keep)
            }
            logits = try prefill(prompts, slots: slots, kept: kept)
        } catch {
            for slot in slots { active[slot] = nil; decoder.reset(slot: slot) }
            throw error
        }
        timings.promptSeconds += Date().timeIntervalSince(t0)
        timings.promptTokens += prompts.reduce(0) { $0 + $1.count }
        for (i, slot) in slots.enumerated() {
            accept(slot: slot, logits: logits + i * vocab, onToken: onToken, onFinish: onFinish)
        }
    }

    /// Prefills prompts[i] into slots[i], whose caches already hold its first kept[i] tokens,
    /// and returns their logits [prompts.count, V]: with `sharePrefixes`, the branches several
    /// prompts share (SharedPrefix) first, level by level, each once, then every prompt's rest
    /// after copying its shared prefix, in one batch.
    private func prefill(_ prompts: [[Int32]], slots: [Int], kept: [Int]) throws -> UnsafeMutablePointer<Float> {
        let plan = SharedPrefix.plan(prompts, held: kept, share: sharePrefixes)
        for round in plan.rounds { try feed(round, prompts, slots: slots) }
        let logits = try feed(plan.finals, prompts, slots: slots)
        let fed = plan.fedTokens
        for (i, slot) in slots.enumerated() {
            timings.sharedPromptTokens += prompts[i].count - fed[i]
            onAdmit?(active[slot]!.request, prompts[i].count - fed[i])
        }
        return logits
    }

    /// Where `prompt` goes (an index into `free`), and the free slot whose cache gives its first
    /// `keep` tokens (the most that any free slot holds; copied when it is another slot). It
    /// goes to the slot whose held tokens it throws away fewest of (a chat's next turn: its own,
    /// none; a prompt that shares only a chat template's header or system prompt with another
    /// conversation: an unused slot, not that conversation's), then the best matching one, then
    /// the one freed longest ago (llama.cpp's server evicts the least recently used slot too).
    /// Without `reuseFinished`: the first free slot, nothing kept.
    private func bestFreeSlot(for prompt: [Int32], among free: [Int]) -> (index: Int, source: Int, keep: Int) {
        guard reuseFinished else { return (0, free[0], 0) }
        let matches = free.map { matched(prompt, slot: $0) }
        let best = matches.indices.max { matches[$0] < matches[$1] }!
        let rank = free.indices.map { (held[free[$0]].count - matches[$0], $0 == best ? 0 : 1, freedAt[free[$0]]) }
        let target = free.indices.min { rank[$0] < rank[$1] }!
        return (target, free[best], matches[best])
    }

    /// How many of `prompt`'s first tokens free slot `slot` holds (all but its last at most:
    /// the last token's row gives the first new token's logits).
    private func matched(_ prompt: [Int32], slot: Int) -> Int {
        let h = held[slot], limit = min(h.count, prompt.count - 1, decoder.length(of: slot))
        var n = 0
        while n < limit, h[n] == prompt[n] { n += 1 }
        return n
    }

    /// Each segment's copied prefix into its slot, then all their tokens in one prefill.
    @discardableResult
    private func feed(_ segments: [PrefixPlan.Segment], _ prompts: [[Int32]], slots: [Int]) throws -> UnsafeMutablePointer<Float> {
        for s in segments {
            if let source = s.source { try decoder.copyPrefix(from: slots[source], to: slots[s.member], count: s.from) }
        }
        return try decoder.prefill(batch: segments.map { Array(prompts[$0.member][$0.from..<$0.to]) },
                                   slots: segments.map { slots[$0.member] })
    }

    /// The pending token of every active slot into rowTokens/rowSlots; returns their count.
    private func gatherRows() -> Int {
        var n = 0
        for slot in 0..<decoder.slots {
            guard let a = active[slot], let last = a.tokens.last else { continue }
            rowTokens[n] = last
            rowSlots[n] = Int32(slot)
            n += 1
        }
        return n
    }

    /// Picks the slot's next token from its logits; ends the sequence at a stop token, the
    /// budget or the cache's end.
    private func accept(slot: Int, logits: UnsafePointer<Float>, onToken: (Int, Int32) -> Void,
                        onFinish: (Int, GenerationResult) -> Void) {
        guard active[slot] != nil else { return }
        if active[slot]!.budget <= 0 {
            finish(slot: slot, reason: .length, onFinish: onFinish)
            return
        }
        // Mutated in place: a copy of the slot's token array would be copied again on append.
        let token = active[slot]!.sampler.next(logits, vocab: vocab)
        if !ignoreStop, stopIds.contains(token) {
            finish(slot: slot, reason: .stop, stopToken: token, onFinish: onFinish)
            return
        }
        active[slot]!.tokens.append(token)
        timings.generatedTokens += 1
        onToken(active[slot]!.request, token)
        if active[slot]!.tokens.count >= active[slot]!.budget || decoder.length(of: slot) >= decoder.maxLength {
            finish(slot: slot, reason: .length, onFinish: onFinish)
        }
    }

    private func finish(slot: Int, reason: GenerationResult.FinishReason, stopToken: Int32? = nil, onFinish: (Int, GenerationResult) -> Void) {
        guard let a = active[slot] else { return }
        release(slot: slot)
        onFinish(a.request, GenerationResult(tokens: a.tokens, reason: reason, stopToken: stopToken))
    }

    /// Frees a slot; with `reuseFinished` it keeps the tokens its cache holds (the prompt and
    /// the new tokens fed back: all but the last one picked).
    private func release(slot: Int) {
        guard let a = active[slot] else { return }
        active[slot] = nil
        releases += 1
        freedAt[slot] = releases
        held[slot] = reuseFinished ? a.prompt + a.tokens.prefix(max(0, decoder.length(of: slot) - a.prompt.count)) : []
    }
}

/// Sequences to decode at once when the user does not say. For a server (`requests` nil):
/// 8, as a step reads each weight once for all of them, so up to about 8 rows cost little
/// more than one on a few cores. For a known list of prompts (eval --generate, generate
/// --prompts): all of them up to 256 (--parallel's limit), so that their prompts are
/// prefilled in long batches and share their common prefixes. Fewer when their KV caches
/// would take more than a quarter of the physical memory.
public func defaultParallel(_ c: ModelConfig, maxLength: Int, requests: Int? = nil) -> Int {
    // The KV cache, plus a logits row and a sampler's scratch (Int and Double per token).
    let perSlot = 2 * c.numLayers * max(1, maxLength) * c.kvDim * MemoryLayout<Float>.stride + 20 * c.vocabSize
    let budget = Int(ProcessInfo.processInfo.physicalMemory / 4)
    let wanted = requests.map { max(1, min($0, 256)) } ?? 8
    return max(1, min(wanted, budget / max(perSlot, 1)))
}
