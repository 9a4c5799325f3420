import MoEFormats
/// Unicode classes the pre-tokenizer patterns test, per scalar: \p{L}, \p{N}, \s (the
/// White_Space property), \p{M}, \p{P}, \p{S}, from Swift's Unicode tables. The Basic
/// Multilingual Plane is tabulated once; other planes are looked up each time.
package enum ScalarClass {
    package static let letter: UInt8 = 1, number: UInt8 = 2, space: UInt8 = 4, mark: UInt8 = 8
    package static let punct: UInt8 = 16, symbol: UInt8 = 32, decimal: UInt8 = 64, asciiPunct: UInt8 = 128

    package static let bmp: [UInt8] = (0..<0x10000).map { compute(UInt32($0)) }

    @inline(__always) package static func of(_ v: UInt32) -> UInt8 {
        v < 0x10000 ? bmp.withUnsafeBufferPointer { $0[Int(v)] } : compute(v)
    }

    package static func compute(_ v: UInt32) -> UInt8 {
        guard let s = Unicode.Scalar(v) else { return 0 }
        let p = s.properties
        var c: UInt8 = p.isWhitespace ? space : 0
        if v < 0x80, (0x21...0x2F).contains(v) || (0x3A...0x40).contains(v) || (0x5B...0x60).contains(v) || (0x7B...0x7E).contains(v) {
            c |= asciiPunct
        }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: c |= letter
        case .decimalNumber: c |= number | decimal
        case .letterNumber, .otherNumber: c |= number
        case .nonspacingMark, .spacingMark, .enclosingMark: c |= mark
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: c |= punct
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: c |= symbol
        default: break
        }
        return c
    }
}

/// UTF-8 decoding of one scalar at byte i of valid UTF-8: (value, byte length).
@inline(__always) package func decodeScalar(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> (UInt32, Int) {
    let b0 = UInt32(b[i])
    if b0 < 0x80 { return (b0, 1) }
    if b0 < 0xE0 { return ((b0 & 0x1F) << 6 | UInt32(b[i + 1] & 0x3F), 2) }
    if b0 < 0xF0 { return ((b0 & 0x0F) << 12 | UInt32(b[i + 1] & 0x3F) << 6 | UInt32(b[i + 2] & 0x3F), 3) }
    return ((b0 & 0x07) << 18 | UInt32(b[i + 1] & 0x3F) << 12 | UInt32(b[i + 2] & 0x3F) << 6 | UInt32(b[i + 3] & 0x3F), 4)
}

/// The GPT-2 byte-to-character map of byte-level BPE: printable Latin-1 bytes stand for
/// themselves, the others for U+0100 upwards in byte order.
package enum ByteLevelMap {
    package static let byteToScalar: [UInt32] = {
        var map = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) {
                map[b] = UInt32(b)
            } else {
                map[b] = next; next += 1
            }
        }
        return map
    }()
    package static let scalarToByte: [UInt32: UInt8] = {
        var r: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { r[s] = UInt8(b) }
        return r
    }()

    /// The bytes a byte-level token string stands for; a string with a character outside
    /// the map stands for its own UTF-8 (as the Rust ByteLevel decoder does).
    package static func bytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        for s in token.unicodeScalars {
            guard let b = scalarToByte[s.value] else { return Array(token.utf8) }
            out.append(b)
        }
        return out
    }
}
