import Foundation

/// A model folder opened for use: weights plus its SentencePiece tokenizer, checked
/// against each other.
public struct LoadedModel {
    public let model: Transformer
    public let tokenizer: Tokenizer

    public static func load(directory: String, quantize: QuantizationSpec? = nil) throws -> LoadedModel {
        let model = try Transformer.load(directory: directory, quantize: quantize)
        let c = model.config
        let tokPath = (directory as NSString).appendingPathComponent("tokenizer.model")
        guard FileManager.default.fileExists(atPath: tokPath) else {
            throw MoETuneError.file(path: tokPath, message: "tokenizer.model not found (moe-tune needs a SentencePiece tokenizer)")
        }
        let tokenizer = try Tokenizer(path: tokPath, bosId: c.bosTokenId, eosId: c.eosTokenIds.first)
        guard tokenizer.vocabSize <= c.vocabSize else {
            throw MoETuneError.file(path: tokPath,
                message: "tokenizer has \(tokenizer.vocabSize) pieces but the model's embedding has only \(c.vocabSize) rows (vocab_size in config.json)")
        }
        return LoadedModel(model: model, tokenizer: tokenizer)
    }
}
