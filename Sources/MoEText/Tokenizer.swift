import CSentencePiece
import Foundation
import MoEFormats

/// A SentencePiece tokenizer (tokenizer.model) through libsentencepiece.
/// The C handle is owned here and freed in deinit. SentencePieceProcessor's const
/// methods are thread-safe, so one Tokenizer may be shared across threads.
public final class Tokenizer: TextTokenizer, @unchecked Sendable {
    private let handle: OpaquePointer
    public let path: String
    public let vocabSize: Int
    public let bosId: Int32?
    public let eosId: Int32?
    public var stopIds: Set<Int32> { eosId.map { [$0] } ?? [] }
    public var prefixIds: [Int32] { bosId.map { [$0] } ?? [] }
    public var suffixIds: [Int32] { [] }

    /// Loads `path`. The BOS/EOS ids come from the tokenizer model; callers that have a
    /// model config pass its ids through `overridingBOS/EOS` (config.json wins, as in
    /// transformers).
    public init(path: String, bosId: Int32? = nil, eosId: Int32? = nil) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw MoETuneError.file(path: path, message: "tokenizer file not found")
        }
        var err = [CChar](repeating: 0, count: 512)
        guard let h = spm_load(path, &err, err.count) else {
            throw MoETuneError.file(path: path, message: "not a SentencePiece model: \(String(cString: err))")
        }
        handle = h
        self.path = path
        vocabSize = Int(spm_vocab_size(h))
        let b = bosId ?? spm_bos_id(h), e = eosId ?? spm_eos_id(h)
        self.bosId = b >= 0 ? b : nil
        self.eosId = e >= 0 ? e : nil
    }

    deinit { spm_free(handle) }

    /// Token ids of `text`, without BOS/EOS.
    public func encode(_ text: String) throws -> [Int32] {
        var err = [CChar](repeating: 0, count: 512)
        var ids: UnsafeMutablePointer<Int32>?
        var count = 0
        let rc = text.utf8CString.withUnsafeBufferPointer { buf in
            spm_encode(handle, buf.baseAddress, buf.count - 1, &ids, &count, &err, err.count)
        }
        guard rc == 0, let ids else {
            throw MoETuneError.file(path: path, message: "encode failed: \(String(cString: err))")
        }
        defer { spm_free_ids(ids) }
        return Array(UnsafeBufferPointer(start: ids, count: count))
    }

    /// The text of `ids`; BOS/EOS/control ids decode to nothing.
    public func decode(_ ids: [Int32]) throws -> String {
        var err = [CChar](repeating: 0, count: 512)
        var text: UnsafeMutablePointer<CChar>?
        var len = 0
        let rc = ids.withUnsafeBufferPointer { buf in
            spm_decode(handle, buf.baseAddress, buf.count, &text, &len, &err, err.count)
        }
        guard rc == 0, let text else {
            throw MoETuneError.file(path: path, message: "decode failed: \(String(cString: err))")
        }
        defer { spm_free_text(text) }
        return String(decoding: UnsafeRawBufferPointer(start: text, count: len), as: UTF8.self)
    }

    /// The vocabulary piece of one id (e.g. "▁the"), for inspection.
    public func piece(_ id: Int32) throws -> String {
        var err = [CChar](repeating: 0, count: 512)
        var text: UnsafeMutablePointer<CChar>?
        var len = 0
        guard spm_id_to_piece(handle, id, &text, &len, &err, err.count) == 0, let text else {
            throw MoETuneError.file(path: path, message: String(cString: err))
        }
        defer { spm_free_text(text) }
        return String(decoding: UnsafeRawBufferPointer(start: text, count: len), as: UTF8.self)
    }

    /// Offsets from the pieces: "▁" stands for one space byte, "<0xNN>" for one byte, and
    /// the space SentencePiece adds in front of the text covers nothing. Exact when
    /// SentencePiece's normalization leaves the text alone; approximate (clamped to the
    /// text) when it rewrites it, e.g. removes extra spaces.
    public func encodeWithOffsets(_ text: String) throws -> [TokenSpan] {
        let ids = try encode(text)
        var spans: [TokenSpan] = []
        spans.reserveCapacity(ids.count)
        let total = text.utf8.count
        var pos = -1
        for id in ids {
            let p = try piece(id)
            var n = 0
            let u = Array(p.utf8)
            if u.count == 6, p.hasPrefix("<0x"), p.hasSuffix(">") { n = 1 } else {
                var i = 0
                while i < u.count {
                    if i + 2 < u.count, u[i] == 0xE2, u[i + 1] == 0x96, u[i + 2] == 0x81 { n += 1; i += 3 } else { n += 1; i += 1 }
                }
            }
            let start = max(0, min(total, pos)), end = max(0, min(total, pos + n))
            spans.append(TokenSpan(id: id, utf8: start..<max(start, end)))
            pos += n
        }
        return spans
    }

    /// The id of a piece, by a scan of the vocabulary (rare use: special tokens).
    public func tokenId(_ token: String) -> Int32? {
        for i in 0..<vocabSize where (try? piece(Int32(i))) == token { return Int32(i) }
        return nil
    }
}
