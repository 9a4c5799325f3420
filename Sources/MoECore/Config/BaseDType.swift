import CKernels
import MoEFormats
import MoEText

/// How the frozen base's linear weights are held (`base_dtype` in the training config,
/// `--base-dtype` on eval, generate and bench-train). bf16 keeps attention, dense-MLP,
/// expert and shared-expert weights in bfloat16 (half the memory; Layers/BF16Weight.swift);
/// embeddings, lm_head, routers and norms stay fp32, as do LoRA weights, their gradients
/// and the optimizer state.
public enum BaseDType: String, CaseIterable, Sendable {
    case fp32
    /// bf16 multiplied natively (AVX512_BF16 / AMX-BF16). No native kernel ships yet, so it
    /// is refused everywhere with a message pointing at `bf16-emulated`.
    case bf16
    /// bf16 storage widened to fp32 a chunk at a time and multiplied with sgemm: the memory
    /// saving at a measured speed cost (README, "bf16 frozen base").
    case bf16Emulated = "bf16-emulated"

    public var isBF16: Bool { self != .fp32 }

    /// Which native bf16 units this CPU has, by CPUID: "AVX512_BF16", "AMX-BF16", both, or nil.
    public static var nativeUnits: String? {
        let f = mt_cpu_native_bf16()
        let names = [(1, "AVX512_BF16"), (2, "AMX-BF16")].filter { f & Int32($0.0) != 0 }.map(\.1)
        return names.isEmpty ? nil : names.joined(separator: " and ")
    }

    /// The measured trade of the emulated path (README, "bf16 frozen base"), printed on
    /// stderr when a run opts into it.
    public static let emulationTrade = """
        bf16-emulated: frozen linear weights held in bf16 (half their fp32 memory), widened to fp32 \
        for every product; measured on a 2-core AVX2 EPYC (bench-small, batch 4 x 256): \
        CPU ms per token 2.32 vs fp32's 2.28 (LoRA on q,k,v,o) and 2.51 vs 2.51 (+ every expert), \
        peak RSS 585 vs 778 MB and 621 vs 814 MB; not faster than fp32
        """

    /// Refuses what cannot run as asked, with one line that says why and what to set instead.
    public func check(quantized: Bool) throws {
        guard isBF16 else { return }
        if quantized {
            throw MoETuneError.invalid("base_dtype \(rawValue) and QLoRA (quantization: nf4) exclude each other: NF4 already holds the frozen weights in 4 bits; drop one of them")
        }
        guard self == .bf16 else { return }
        if let units = BaseDType.nativeUnits {
            throw MoETuneError.invalid("base_dtype bf16: this CPU has \(units), but moe-tune ships no native bf16 kernel yet (none could be tested); set base_dtype: bf16-emulated (--base-dtype bf16-emulated) for the memory saving with fp32 products")
        }
        throw MoETuneError.invalid("base_dtype bf16: this CPU has no AVX512_BF16 or AMX-BF16, and the emulated bf16 base (widen to fp32, then sgemm) measured slower than fp32 (bench-small on a 2-core AVX2 EPYC: 2.32 vs 2.28 CPU ms per token); set base_dtype: bf16-emulated (--base-dtype bf16-emulated) to halve the frozen weights' memory anyway")
    }
}
