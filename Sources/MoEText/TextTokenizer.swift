import Foundation
import MoEFormats

/// One token of an encoding and the UTF-8 byte range of the input text it came from.
/// Special tokens split out of the text cover their own text; tokens the post-processor
/// adds (BOS) cover an empty range at 0.
public struct TokenSpan: Equatable, Sendable {
    public var id: Int32
    public var utf8: Range<Int>
    public init(id: Int32, utf8: Range<Int>) { self.id = id; self.utf8 = utf8 }
}

/// What moe-tune needs from a tokenizer: SentencePiece (`tokenizer.model`, `Tokenizer`) and
/// Hugging Face `tokenizer.json` (`HFTokenizer`) both provide it. Instances are immutable
/// and may be shared across threads.
public protocol TextTokenizer: AnyObject, Sendable {
    /// Ids run from 0 to vocabSize - 1 (added tokens included).
    var vocabSize: Int { get }
    /// The beginning-of-sequence id; nil for tokenizers without one (many byte-level models).
    var bosId: Int32? { get }
    /// The end-of-sequence id appended to training examples.
    var eosId: Int32? { get }
    /// Every id that ends generation (eos_token and generation_config.json's eos_token_id).
    var stopIds: Set<Int32> { get }
    /// Special ids the tokenizer puts before / after one sequence when asked to add them
    /// (the post-processor's template; [BOS] and [] for SentencePiece).
    var prefixIds: [Int32] { get }
    var suffixIds: [Int32] { get }
    /// Ids of `text`, no special tokens added. Special-token strings inside the text
    /// (`<|im_start|>`) become their ids, as Hugging Face tokenizers do.
    func encode(_ text: String) throws -> [Int32]
    /// The same ids with the UTF-8 byte range of `text` each token came from.
    func encodeWithOffsets(_ text: String) throws -> [TokenSpan]
    /// The text of `ids`; special tokens are left out.
    func decode(_ ids: [Int32]) throws -> String
    /// The id of a special (or added) token given by its text, e.g. "<|im_end|>".
    func tokenId(_ token: String) -> Int32?
}

extension TextTokenizer {
    /// encode with the post-processor's special tokens: transformers' `tokenizer(text).input_ids`.
    public func encode(_ text: String, addSpecialTokens: Bool) throws -> [Int32] {
        addSpecialTokens ? prefixIds + (try encode(text)) + suffixIds : try encode(text)
    }

    /// The ids of a {"text": ...} training example: encode with special tokens, then EOS
    /// unless it is already last.
    public func trainingIds(_ text: String) throws -> [Int32] {
        var ids = try encode(text, addSpecialTokens: true)
        if let eos = eosId, ids.last != eos { ids.append(eos) }
        return ids
    }
}

/// Opens the tokenizer of a model folder: `tokenizer.json` when present, else
/// `tokenizer.model` (SentencePiece); of a `.gguf` file: its `tokenizer.ggml.*` metadata. `bosId`/`eosIds` are config.json's, which win for
/// SentencePiece as in transformers and add stop ids for tokenizer.json.
public enum TokenizerLoader {
    public static func load(directory: String, bosId: Int32? = nil, eosIds: [Int32] = []) throws -> any TextTokenizer {
        if GGUFFile.isGGUFPath(directory) { return try GGUFTokenizer.load(path: directory, extraStopIds: eosIds) }
        let json = (directory as NSString).appendingPathComponent("tokenizer.json")
        if FileManager.default.fileExists(atPath: json) {
            return try HFTokenizer(directory: directory, extraStopIds: eosIds)
        }
        let model = (directory as NSString).appendingPathComponent("tokenizer.model")
        guard FileManager.default.fileExists(atPath: model) else {
            throw MoETuneError.file(path: model, message: "neither tokenizer.json nor tokenizer.model found")
        }
        return try Tokenizer(path: model, bosId: bosId, eosId: eosIds.first)
    }
}
