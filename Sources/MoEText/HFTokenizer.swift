import Foundation
import MoEFormats

/// A Hugging Face `tokenizer.json` tokenizer (BPE model), id for id as the Rust `tokenizers`
/// library encodes: added tokens cut out of the text first, then normalizer,
/// pre-tokenizer and BPE on each stretch between them; the post-processor's special tokens
/// when asked (`encode(_:addSpecialTokens:)`). tokenizer_config.json names BOS/EOS,
/// generation_config.json adds stop ids.
public final class HFTokenizer: TextTokenizer, @unchecked Sendable {
    public let path: String
    public let vocabSize: Int
    public let bosId: Int32?
    public let eosId: Int32?
    public let stopIds: Set<Int32>
    public let prefixIds: [Int32]
    public let suffixIds: [Int32]

    package let model: BPEModel
    package let normalizer: Normalizer?
    package let preTokenizer: PreTokenizer?
    package let decoder: TokenDecoder?
    package let added: AddedTokens
    package let rawMatcher: AddedTokens.Matcher
    package let normalizedMatcher: AddedTokens.Matcher
    /// Token strings of added tokens by id, and which ids are special.
    package let addedById: [Int32: String]
    package let specialIds: Set<Int32>
    package let addedByContent: [String: Int32]

    /// Reads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json and
    /// DIR/generation_config.json. `extraStopIds`: config.json's eos ids.
    public convenience init(directory: String, extraStopIds: [Int32] = []) throws {
        let dir = directory as NSString
        try self.init(path: dir.appendingPathComponent("tokenizer.json"),
                      configPath: dir.appendingPathComponent("tokenizer_config.json"),
                      generationConfigPath: dir.appendingPathComponent("generation_config.json"),
                      extraStopIds: extraStopIds)
    }

    public convenience init(path: String, configPath: String? = nil, generationConfigPath: String? = nil, extraStopIds: [Int32] = []) throws {
        guard FileManager.default.fileExists(atPath: path) else { throw MoETuneError.file(path: path, message: "tokenizer file not found") }
        let json = try JSONReader.parse(path: path)
        var config: (json: [String: Any], path: String)?
        if let cp = configPath, FileManager.default.fileExists(atPath: cp) { config = (try JSONReader.parse(path: cp), cp) }
        try self.init(path: path, json: json, config: config, generationConfigPath: generationConfigPath, extraStopIds: extraStopIds)
    }

    /// A tokenizer from parsed tokenizer.json values (`json`) and tokenizer_config.json
    /// values (`config`, for bos_token / eos_token); `path` names the source in messages.
    package init(path: String, json: [String: Any], config: (json: [String: Any], path: String)?, generationConfigPath: String?, extraStopIds: [Int32]) throws {
        self.path = path
        let r = JSONReader(path: path)
        if let t = json["truncation"], !(t is JSONNull) { throw r.fail("truncation", "must be null (truncation is not supported)") }
        if let p = json["padding"], !(p is JSONNull) { throw r.fail("padding", "must be null (padding is not supported)") }
        normalizer = try Normalizer.parse(r, json["normalizer"], key: "normalizer")
        preTokenizer = try PreTokenizer.parse(r, json["pre_tokenizer"], key: "pre_tokenizer")
        decoder = try TokenDecoder.parse(r, json["decoder"], key: "decoder")
        guard let m = try r.optionalObject(json["model"], "model") else { throw r.fail("model", "missing") }
        model = try BPEModel(r, m, byteLevel: preTokenizer?.isByteLevel ?? false)
        (prefixIds, suffixIds) = try PostProcessor.parse(r, json["post_processor"], key: "post_processor")

        var added = AddedTokens()
        if let list = json["added_tokens"], !(list is JSONNull) {
            guard let list = list as? [Any] else { throw r.fail("added_tokens", "must be a list") }
            for (i, item) in list.enumerated() {
                let k = "added_tokens[\(i)]"
                guard let o = item as? [String: Any] else { throw r.fail(k, "must be an object") }
                let content = try r.string(o, "content", k)
                added.tokens.append(.init(id: try r.tokenId(o["id"], "\(k).id"), content: content, bytes: Array(content.utf8),
                    special: try r.bool(o, "special", k, default: false), lstrip: try r.bool(o, "lstrip", k, default: false),
                    rstrip: try r.bool(o, "rstrip", k, default: false), singleWord: try r.bool(o, "single_word", k, default: false),
                    normalized: try r.bool(o, "normalized", k, default: true)))
            }
        }
        self.added = added
        rawMatcher = try added.matcher(normalized: false, nil)
        let norm = normalizer
        do {
            normalizedMatcher = try added.matcher(normalized: true, norm.map { n in { try n.normalize($0) } })
        } catch let e as MoETuneError {
            throw MoETuneError.file(path: path, message: "normalizing the added tokens: \(e.description)")
        }
        var byId: [Int32: String] = [:], byContent: [String: Int32] = [:], special = Set<Int32>()
        for t in added.tokens {
            byId[t.id] = t.content; byContent[t.content] = t.id
            if t.special { special.insert(t.id) }
        }
        addedById = byId; addedByContent = byContent; specialIds = special
        vocabSize = max(model.idToToken.count, Int((added.tokens.map(\.id).max() ?? -1) + 1))

        // BOS / EOS / stop ids.
        var bos: Int32?, eos: Int32?
        var stops = Set(extraStopIds)
        let mdl = model, contents = byContent
        func lookup(_ v: Any?, _ cr: JSONReader, _ key: String) throws -> Int32? {
            guard let v, !(v is JSONNull) else { return nil }
            var name: String?
            if let s = v as? String { name = s } else if let o = v as? [String: Any] { name = o["content"] as? String }
            // `"eos_token": 5` was taken as no EOS at all (dropped from every example).
            guard let name else { throw cr.fail(key, "must be a token string or {\"content\": string}, got \(Printable.quoted("\(v)"))") }
            guard let id = contents[name] ?? mdl.tokenIds[mdl.byteLevel ? ByteLevelMap.bytes(of: name) : Array(name.utf8)] else {
                throw cr.fail(key, "\(Printable.quoted(name)) is not a token of tokenizer.json")
            }
            return id
        }
        if let (c, cp) = config {
            let cr = JSONReader(path: cp)
            bos = try lookup(c["bos_token"], cr, "bos_token")
            eos = try lookup(c["eos_token"], cr, "eos_token")
        }
        if let gp = generationConfigPath, FileManager.default.fileExists(atPath: gp) {
            let g = try JSONReader.parse(path: gp)
            let gr = JSONReader(path: gp)
            if let v = g["eos_token_id"], !(v is JSONNull) {
                let list = (v as? [Any]) ?? [v]
                for (i, x) in list.enumerated() { stops.insert(try gr.tokenId(x, "eos_token_id[\(i)]")) }
            }
        }
        if bos == nil, let first = prefixIds.first { bos = first }
        if eos == nil, let id = extraStopIds.first { eos = id }
        if let eos { stops.insert(eos) }
        bosId = bos; eosId = eos; stopIds = stops
    }

    // MARK: Encoding

    public func encode(_ text: String) throws -> [Int32] {
        var ids: [Int32] = []
        var ranges: [Range<Int>]? = nil
        try run(text, ids: &ids, ranges: &ranges)
        return ids
    }

    public func encodeWithOffsets(_ text: String) throws -> [TokenSpan] {
        var ids: [Int32] = []
        var ranges: [Range<Int>]? = []
        try run(text, ids: &ids, ranges: &ranges)
        return zip(ids, ranges!).map { TokenSpan(id: $0, utf8: $1) }
    }

    private func run(_ text: String, ids: inout [Int32], ranges: inout [Range<Int>]?) throws {
        // Offsets and piece lengths are Int32s: a longer text is refused, not trapped.
        guard text.utf8.count < Int(Int32.max) else {
            throw MoETuneError.file(path: path, message: "a text of \(text.utf8.count) bytes is more than the tokenizer takes (2 GiB)")
        }
        do { try runPieces(text, ids: &ids, ranges: &ranges) } catch let e as MoETuneError {
            // A Split or Replace regex that backtracks without end (BoundedRegex's step limit).
            throw MoETuneError.file(path: path, message: e.description)
        }
    }

    private func runPieces(_ text: String, ids: inout [Int32], ranges: inout [Range<Int>]?) throws {
        var text = text
        let track = ranges != nil
        let cache = model.takeCache()
        defer { model.giveBack(cache) }
        try text.withUTF8 { b in
            ids.reserveCapacity(b.count / 3)
            var segments: [(Range<Int>, Int32?)] = []
            if rawMatcher.isEmpty { segments = [(0..<b.count, nil)] } else { rawMatcher.split(b, 0..<b.count, into: &segments) }
            for (seg, id) in segments {
                if let id { ids.append(id); ranges?.append(seg); continue }
                var buf = TextBuffer(UnsafeBufferPointer(rebasing: b[seg]), offset: seg.lowerBound, track: track)
                try normalizer?.apply(&buf)
                if buf.bytes.isEmpty { continue }
                if normalizedMatcher.isEmpty {
                    try encodeStretch(&buf, start: seg.lowerBound, cache: cache, ids: &ids, ranges: &ranges)
                    continue
                }
                var parts: [(Range<Int>, Int32?)] = []
                buf.bytes.withUnsafeBufferPointer { normalizedMatcher.split($0, 0..<$0.count, into: &parts) }
                if parts.count == 1, parts[0].1 == nil {
                    try encodeStretch(&buf, start: seg.lowerBound, cache: cache, ids: &ids, ranges: &ranges)
                    continue
                }
                for (p, pid) in parts {
                    if let pid { ids.append(pid); ranges?.append(buf.originalRange(p)); continue }
                    var sub = TextBuffer(bytes: Array(buf.bytes[p]), origin: buf.origin.map { Array($0[p]) })
                    try encodeStretch(&sub, start: p.lowerBound == 0 ? seg.lowerBound : seg.lowerBound + 1, cache: cache, ids: &ids, ranges: &ranges)
                }
            }
        }
    }

    /// Pre-tokenizer and BPE over one normalized stretch of text.
    private func encodeStretch(_ buf: inout TextBuffer, start: Int, cache: WordCache, ids: inout [Int32], ranges: inout [Range<Int>]?) throws {
        var pieces = [0..<buf.bytes.count]
        try preTokenizer?.run(&buf, pieces: &pieces, start: start)
        var local: [Range<Int>]? = ranges == nil ? nil : []
        buf.bytes.withUnsafeBufferPointer { b in
            for p in pieces { model.encode(b, p, cache: cache, ids: &ids, ranges: &local) }
        }
        if let local { for r in local { ranges!.append(buf.originalRange(r)) } }
    }

    // MARK: Decoding and lookup

    public func decode(_ ids: [Int32]) throws -> String { try decode(ids, skipSpecialTokens: true) }

    public func decode(_ ids: [Int32], skipSpecialTokens: Bool) throws -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard id >= 0, Int(id) < vocabSize else { throw MoETuneError.file(path: path, message: "token id \(id) is outside the vocabulary of \(vocabSize)") }
            if let a = addedById[id] {
                if skipSpecialTokens && specialIds.contains(id) { continue }
                tokens.append(a)
            } else if Int(id) < model.idToToken.count {
                tokens.append(model.idToToken[Int(id)])
            }
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.run(tokens).joined()
    }

    public func tokenId(_ token: String) -> Int32? {
        if let id = addedByContent[token] { return id }
        return model.tokenIds[model.byteLevel ? ByteLevelMap.bytes(of: token) : Array(token.utf8)]
    }
}
