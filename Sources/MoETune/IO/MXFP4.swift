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
    static let values: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6]

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
