import Foundation
import MoEFormats
import MoEText

/// A model folder opened for use: weights plus its tokenizer (tokenizer.json, else
/// SentencePiece tokenizer.model), checked against each other.
public struct LoadedModel {
    public let model: Transformer
    public let tokenizer: any TextTokenizer

    public static func load(directory: String, quantize: QuantizationSpec? = nil, base: BaseDType = .fp32) throws -> LoadedModel {
        let model = try Transformer.load(directory: directory, quantize: quantize, base: base)
        let c = model.config
        let tokenizer = try TokenizerLoader.load(directory: directory, bosId: c.bosTokenId, eosIds: c.eosTokenIds)
        let tokPath = (tokenizer as? HFTokenizer)?.path ?? (tokenizer as? Tokenizer)?.path ?? directory
        guard tokenizer.vocabSize <= c.vocabSize else {
            throw MoETuneError.file(path: tokPath,
                message: "tokenizer has \(tokenizer.vocabSize) pieces but the model's embedding has only \(c.vocabSize) rows (vocab_size in config.json)")
        }
        return LoadedModel(model: model, tokenizer: tokenizer)
    }
}
