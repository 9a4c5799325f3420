import MoEFormats
import MoEText
/// Mistral: the Llama layout plus `sliding_window` (null, or not shorter than the
/// sequence: no effect).
extension ModelFamily {
    public static let mistral = ModelFamily(
        name: "mistral", modelTypes: ["mistral"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 4096),
        readConfig: { r, c in
            try r.refuse("attention_bias", message: "biases in linear layers are not supported")
            try r.refuse("mlp_bias", message: "biases in linear layers are not supported")
            c.slidingWindow = try r.optionalInt("sliding_window")
        })
}
