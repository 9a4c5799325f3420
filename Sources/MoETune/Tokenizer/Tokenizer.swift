import CSentencePiece
import Foundation

/// A SentencePiece tokenizer (tokenizer.model) through libsentencepiece.
/// The C handle is owned here and freed in deinit. SentencePieceProcessor's const
/// methods are thread-safe, so one Tokenizer may be shared across threads.
public final class Tokenizer: @unchecked Sendable {
    private let handle: OpaquePointer
    public let path: String
    public let vocabSize: Int
    public let bosId: Int32
    public let eosId: Int32

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
        self.bosId = bosId ?? spm_bos_id(h)
        self.eosId = eosId ?? spm_eos_id(h)
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
}
