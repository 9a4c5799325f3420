import Foundation

/// MXFP4 expert weights of the released GPT-OSS checkpoints, dequantized to fp32 at load as
/// transformers 5 does it (integrations/mxfp4.py, convert_moe_packed_tensors).
/// A tensor NAME is stored as NAME_blocks [E, R, G, 16] (u8, two 4-bit E2M1 codes a byte,
/// the low nibble first) and NAME_scales [E, R, G] (u8, a power-of-two exponent + 127 per
/// block of 32 values). Value 2c (low nibble) and 2c + 1 (high nibble) of block g of row r are
/// FP4[code] * 2^(scale - 127), FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6] and their negatives
/// (codes 8...15). The dequantized tensor is transformers' parameter layout: [E, G*32, R]
/// (row r of the checkpoint becomes column r: gate_up_proj [E, H, 2I], down_proj [E, I, H]).
public enum MXFP4 {
    package static let values: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6]

    /// Whether the file stores `name` as MXFP4 blocks and scales.
    public static func isStored(_ name: String, in file: SafeTensorsFile) -> Bool {
        file.tensors[name + "_blocks"] != nil
    }

    /// The dequantized tensor `name` [E, G*32, R] and its shape; a bad dtype or shape is
    /// refused naming the tensor.
    public static func dequantize(_ name: String, in file: SafeTensorsFile) throws -> (values: [Float], shape: [Int]) {
        guard let b = file.tensors[name + "_blocks"], let s = file.tensors[name + "_scales"] else {
            throw MoETuneError.file(path: file.path, message: "tensor \(name): MXFP4 needs both \(name)_blocks and \(name)_scales")
        }
        guard b.dtype == .u8, s.dtype == .u8 else {
            throw MoETuneError.file(path: file.path, message: "tensor \(name)_blocks / _scales: MXFP4 must be U8, got \(b.dtype.rawValue) / \(s.dtype.rawValue)")
        }
        guard b.shape.count == 4, b.shape[3] == 16, Array(b.shape.prefix(3)) == s.shape else {
            throw MoETuneError.file(path: file.path,
                message: "tensor \(name)_blocks \(b.shape) / _scales \(s.shape): expected [E, R, G, 16] blocks and [E, R, G] scales")
        }
        let (e, r, g) = (b.shape[0], b.shape[1], b.shape[2])
        let cols = g * 32
        var out = [Float](repeating: 0, count: e * cols * r)
        let blocks = file.bytes(of: b), scales = file.bytes(of: s)
        out.withUnsafeMutableBufferPointer { o in
            let o = o.baseAddress!
            for ex in 0..<e {
                for row in 0..<r {
                    for blk in 0..<g {
                        let scaleIndex = (ex * r + row) * g + blk
                        let exponent = Int(scales[scaleIndex]) - 127
                        let byteBase = scaleIndex * 16
                        for c in 0..<16 {
                            let byte = blocks[byteBase + c]
                            let col = blk * 32 + 2 * c
                            // out[ex, col, row]: the transpose transformers applies last.
                            o[(ex * cols + col) * r + row] = Foundation.scalbn(values[Int(byte & 0x0F)], exponent)
                            o[(ex * cols + col + 1) * r + row] = Foundation.scalbn(values[Int(byte >> 4)], exponent)
                        }
                    }
                }
            }
        }
        return (out, [e, cols, r])
    }
}

/// The `quantization_config` of an MXFP4 checkpoint (GPT-OSS; transformers' Mxfp4Config):
/// quant_method "mxfp4", modules_to_not_convert (patterns of modules left unquantized) and
/// dequantize (a loading switch of transformers; moe-tune always dequantizes, so it has no
/// effect here). Any other key, or another quant_method, is refused naming it.
public struct MXFP4Quantization: Equatable, Sendable {
    /// nil: transformers' default, every expert block converted.
    public var modulesToNotConvert: [String]?

    package static func read(_ q: [String: Any], path: String) throws -> MXFP4Quantization {
        let method = q["quant_method"] as? String ?? "?"
        guard method == "mxfp4" else {
            throw MoETuneError.config(path: path, key: "quantization_config",
                message: "quant_method \(Printable.quoted(method)) is not supported for gpt_oss (mxfp4 is)")
        }
        for key in q.keys.sorted() where !["quant_method", "modules_to_not_convert", "dequantize"].contains(key) {
            throw MoETuneError.config(path: path, key: "quantization_config." + key, message: "MXFP4 field that moe-tune does not implement")
        }
        if let d = q["dequantize"], !(d is NSNull), !((d as? NSNumber).map(CFGetTypeIDIsBool) ?? false) {
            throw MoETuneError.config(path: path, key: "quantization_config.dequantize", message: "expected true or false")
        }
        var result = MXFP4Quantization(modulesToNotConvert: nil)
        if let v = q["modules_to_not_convert"], !(v is NSNull) {
            guard let list = v as? [String] else {
                throw MoETuneError.config(path: path, key: "quantization_config.modules_to_not_convert", message: "expected a list of module names")
            }
            for p in list where (try? NSRegularExpression(pattern: p)) == nil {
                throw MoETuneError.config(path: path, key: "quantization_config.modules_to_not_convert",
                                          message: "\(Printable.quoted(p)) is not a valid pattern")
            }
            result.modulesToNotConvert = list
        }
        return result
    }

    /// The pattern of modules_to_not_convert that keeps `module` unquantized, or nil when
    /// the module is converted (stored as MXFP4). transformers' should_convert_module: a
    /// pattern matches as a regex from the start of the name up to a module boundary
    /// ("layer.1" matches "layer.1.attn", not "layer.11.attn"; "layers.*" any layer), or as
    /// a suffix of the name.
    public func exemptingPattern(for module: String) -> String? {
        (modulesToNotConvert ?? []).first { p in
            if module.hasSuffix(p) { return true }
            guard let re = try? NSRegularExpression(pattern: "^(?:" + p + ")(?:(?<=\\.)|(?=\\.|$))") else { return false }
            return re.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil
        }
    }
}
