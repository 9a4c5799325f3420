import Foundation
import MoEFormats
import MoEText
import MoECore
import MoEData
import MoEInference

/// What a checkpoint records of the config it was trained with: the resolved YAML flattened
/// to `section.key: value` pairs, and a hash over the pairs that can change the result.
/// Resuming compares the two configs key by key and names every key that changed.
public enum ConfigFingerprint {
    /// Keys that cannot change the trained adapter (when to evaluate, log and save, where
    /// the run lives, whether activations are recomputed: bit-identical), or that only
    /// lengthen it (checked by the trainer).
    public static let mayChange: Set<String> = [
        "training.eval_every", "training.eval_batches", "training.log_every", "training.save_every",
        "training.keep_checkpoints", "training.out_dir", "training.max_steps", "training.epochs",
        "training.recompute",
    ]

    /// Keys the resolved config gained later, with the default a run saved before them had.
    package static let laterDefaults = ["base_dtype": "fp32", "training.method": "sft", "training.init_adapter": "null",
                                       "training.recompute": "none"]

    /// `section.key` → value text of a config rendered by `TrainConfig.resolvedYAML`
    /// (nested lines are part of their key's value).
    public static func flatten(_ yaml: String) -> [String: String] {
        var out: [String: String] = [:]
        var section = "", last: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: true) {
            let indent = line.prefix { $0 == " " }.count
            let text = line.trimmingCharacters(in: .whitespaces)
            guard let colon = text.firstIndex(of: ":") else { continue }
            let key = String(text[..<colon]), value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            switch indent {
            case 0:
                section = key
                last = key
                out[key] = value
            case 2:
                last = section + "." + key
                out[last!] = value
            default:
                if let last { out[last, default: ""] += " " + text }
            }
        }
        // Keys added after runs were saved count as absent at their default, so that those
        // runs still resume (and hash as they did).
        for (key, value) in laterDefaults where out[key] == value { out[key] = nil }
        return out
    }

    /// FNV-1a (64-bit) over the sorted pairs that may not change, as hex.
    public static func hash(_ yaml: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for (k, v) in flatten(yaml).sorted(by: { $0.key < $1.key }) where !mayChange.contains(k) {
            for b in (k + "=" + v + "\n").utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        }
        return String(h, radix: 16)
    }

    /// The keys whose values differ, as "key: old -> new", sorted; `ignoring` keys are skipped.
    public static func changes(from old: String, to new: String, ignoring: Set<String> = mayChange) -> [String] {
        let a = flatten(old), b = flatten(new)
        return Set(a.keys).union(b.keys).sorted().compactMap { k in
            guard !ignoring.contains(k), a[k] != b[k] else { return nil }
            // A section line has no value of its own; its keys are compared one by one.
            if (a[k] ?? "").isEmpty, (b[k] ?? "").isEmpty { return nil }
            return "\(k): \(a[k] ?? "absent") -> \(b[k] ?? "absent")"
        }
    }
}
