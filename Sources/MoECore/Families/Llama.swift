import MoEFormats
import MoEText
/// Llama (1, 2, 3.x; also SmolLM2 and other llama-architecture checkpoints): dense SwiGLU
/// MLP, grouped-query attention, RoPE with optional llama3/linear/yarn scaling, optional
/// tied embeddings. Tensors: model.layers.N.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj.
/// GGUF: llama.cpp's architecture "llama" (its names in Families/GGUFLayout.swift).
extension ModelFamily {
    public static let llama = ModelFamily(
        name: "llama", modelTypes: ["llama"], moe: nil,
        defaults: FamilyDefaults(rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048),
        readConfig: { r, c in
            try r.refuse("attention_bias", message: "biases in linear layers are not supported for llama (q/k/v/o biases)")
            try r.refuse("mlp_bias", message: "biases in linear layers are not supported")
            // LlamaConfig has no sliding window.
            c.slidingWindow = nil
        },
        ggufArchitecture: "llama")
}
