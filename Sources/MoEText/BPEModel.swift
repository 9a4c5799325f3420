import Foundation
import MoEFormats

/// The BPE model of tokenizer.json. Tokens are keyed by the bytes they stand for (for
/// byte-level models the GPT-2 character map is undone at load), merges by the pair of ids,
/// so encoding a piece works on bytes and integers only. Words already seen are cached.
package final class BPEModel: @unchecked Sendable {
    /// Token string per id (model vocabulary; added tokens are filled in by HFTokenizer).
    package var idToToken: [String]
    /// Model tokens by the bytes they stand for.
    package let tokenIds: [[UInt8]: Int32]
    package let byteLevel: Bool
    /// Byte-level: the id of each single byte (-1: none).
    package let byteIds: [Int32]
    package let merges: PairTable
    package let unk: Int32?
    package let fuseUnk: Bool
    package let byteFallback: Bool
    package let ignoreMerges: Bool
    package let prefix: [UInt8]
    package let suffix: [UInt8]
    /// Ids of "<0x00>"..."<0xFF>" (-1: missing).
    package let fallbackIds: [Int32]

    private let lock = NSLock()
    private var caches: [WordCache] = []

    package init(_ r: JSONReader, _ o: [String: Any], byteLevel: Bool) throws {
        let key = "model"
        let type = try r.optionalString(o, "type", key) ?? "BPE"
        guard type == "BPE" else { throw r.unsupported(key, type) }
        if let d = o["dropout"], !(d is JSONNull) { throw r.fail("model.dropout", "must be null (BPE dropout is not supported)") }
        guard let vocab = (o["vocab"] as? VocabPairs)?.pairs else { throw r.fail("model.vocab", "missing or not an object") }
        self.byteLevel = byteLevel
        var byString: [[UInt8]: Int32] = [:]
        var byBytes: [[UInt8]: Int32] = [:]
        byString.reserveCapacity(vocab.count); byBytes.reserveCapacity(vocab.count)
        var maxId = -1
        var pairs: [(String, Int)] = []
        pairs.reserveCapacity(vocab.count)
        for (tok, v) in vocab {
            let id = Int(try r.tokenId(v, "model.vocab[\"\(Printable.text(tok))\"]"))
            pairs.append((tok, id)); maxId = max(maxId, id)
        }
        var names = [String](repeating: "", count: maxId + 1)
        for (tok, id) in pairs {
            names[id] = tok
            byString[Array(tok.utf8)] = Int32(id)
            let b = byteLevel ? ByteLevelMap.bytes(of: tok) : Array(tok.utf8)
            if let old = byBytes[b], old < Int32(id) { continue }
            byBytes[b] = Int32(id)
        }
        idToToken = names
        tokenIds = byBytes
        var bi = [Int32](repeating: -1, count: 256)
        for b in 0..<256 { bi[b] = byBytes[[UInt8(b)]] ?? -1 }
        byteIds = bi
        var fb = [Int32](repeating: -1, count: 256)
        for b in 0..<256 { fb[b] = byString[Array(String(format: "<0x%02X>", b).utf8)] ?? -1 }
        fallbackIds = fb
        if let u = try r.optionalString(o, "unk_token", key) {
            guard let id = byString[Array(u.utf8)] else { throw r.fail("model.unk_token", "\(Printable.quoted(u)) is not in the vocabulary") }
            unk = id
        } else { unk = nil }
        fuseUnk = try r.bool(o, "fuse_unk", key, default: false)
        byteFallback = try r.bool(o, "byte_fallback", key, default: false)
        ignoreMerges = try r.bool(o, "ignore_merges", key, default: false)
        prefix = Array((try r.optionalString(o, "continuing_subword_prefix", key) ?? "").utf8)
        suffix = Array((try r.optionalString(o, "end_of_word_suffix", key) ?? "").utf8)

        let list = (o["merges"] as? [Any]) ?? []
        if o["merges"] != nil, !(o["merges"] is [Any]) { throw r.fail("model.merges", "must be a list") }
        let table = PairTable(capacity: list.count)
        for (rank, m) in list.enumerated() {
            let a: String, b: String
            if let s = m as? String, let sp = s.firstIndex(of: " ") {
                a = String(s[..<sp]); b = String(s[s.index(after: sp)...])
            } else if let p = m as? [Any], p.count == 2, let x = p[0] as? String, let y = p[1] as? String {
                a = x; b = y
            } else {
                throw r.fail("model.merges[\(rank)]", "must be \"a b\" or [a, b]")
            }
            guard let ia = byString[Array(a.utf8)], let ib = byString[Array(b.utf8)] else {
                throw r.fail("model.merges[\(rank)]", "\(Printable.quoted(a + " " + b)): a part is not in the vocabulary")
            }
            let merged = Array(a.utf8) + Array(b.utf8).dropFirst(prefix.isEmpty ? 0 : prefix.count)
            guard let id = byString[merged] else {
                throw r.fail("model.merges[\(rank)]", "\(Printable.quoted(a + " " + b)): the merged token is not in the vocabulary")
            }
            table.put(ia, ib, rank: Int32(rank), id: id)   // a repeated pair keeps its last rank, as in Rust
        }
        merges = table
    }

    // MARK: Encoding

    /// Appends the tokens of one piece (bytes r of b) and, if wanted, each token's byte range.
    package func encode(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, cache: WordCache, ids: inout [Int32], ranges: inout [Range<Int>]?) {
        if ignoreMerges, let id = tokenIds[Array(b[r])] {
            ids.append(id); ranges?.append(r); return
        }
        let cached: [Int32]
        if let hit = cache.get(b, r) { cached = hit } else {
            cached = mergeWord(b, r, cache)
            cache.put(b, r, cached)
        }
        var pos = r.lowerBound
        var k = 0
        while k < cached.count {
            ids.append(cached[k])
            let n = Int(cached[k + 1])
            ranges?.append(pos..<(pos + n))
            pos += n
            k += 2
        }
    }

    /// [id, byte length, id, byte length, ...] of one word.
    private func mergeWord(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, _ cache: WordCache) -> [Int32] {
        var sym = cache.sym, len = cache.len
        sym.removeAll(keepingCapacity: true); len.removeAll(keepingCapacity: true)
        func pushUnknown(_ n: Int) {
            guard let unk else { return }
            if fuseUnk, let last = sym.last, last == unk { len[len.count - 1] += Int32(n); return }
            sym.append(unk); len.append(Int32(n))
        }
        if byteLevel && prefix.isEmpty && suffix.isEmpty {
            for i in r {
                let id = byteIds[Int(b[i])]
                if id >= 0 { sym.append(id); len.append(1) } else { pushUnknown(1) }
            }
        } else {
            var i = r.lowerBound
            var key: [UInt8] = []
            while i < r.upperBound {
                let n = byteLevel ? 1 : decodeScalar(b, i).1
                key.removeAll(keepingCapacity: true)
                if i > r.lowerBound { key += prefix }
                key += b[i..<(i + n)]
                if i + n == r.upperBound { key += suffix }
                if let id = tokenIds[key] {
                    sym.append(id); len.append(Int32(n))
                } else if byteFallback, (i..<(i + n)).allSatisfy({ fallbackIds[Int(b[$0])] >= 0 }) {
                    for j in i..<(i + n) { sym.append(fallbackIds[Int(b[j])]); len.append(1) }
                } else {
                    pushUnknown(n)
                }
                i += n
            }
        }
        if sym.count > 48 {
            mergeLong(&sym, &len)
            var out = [Int32]()
            out.reserveCapacity(sym.count * 2)
            for k in sym.indices { out.append(sym[k]); out.append(len[k]) }
            return out
        }
        // Merge the lowest-ranked adjacent pair, leftmost first, until none is left.
        var rank = cache.rank
        rank.removeAll(keepingCapacity: true)
        var newIds = cache.newIds
        newIds.removeAll(keepingCapacity: true)
        for k in 0..<max(0, sym.count - 1) {
            if let m = merges.get(sym[k], sym[k + 1]) { rank.append(m.rank); newIds.append(m.id) } else { rank.append(Int32.max); newIds.append(-1) }
        }
        while !rank.isEmpty {
            var best = 0
            var bestRank = rank[0]
            for k in 1..<rank.count where rank[k] < bestRank { bestRank = rank[k]; best = k }
            if bestRank == Int32.max { break }
            sym[best] = newIds[best]
            len[best] += len[best + 1]
            sym.remove(at: best + 1); len.remove(at: best + 1)
            rank.remove(at: best); newIds.remove(at: best)
            if best > 0 {
                if let m = merges.get(sym[best - 1], sym[best]) { rank[best - 1] = m.rank; newIds[best - 1] = m.id } else { rank[best - 1] = Int32.max }
            }
            if best < rank.count {
                if let m = merges.get(sym[best], sym[best + 1]) { rank[best] = m.rank; newIds[best] = m.id } else { rank[best] = Int32.max }
            }
        }
        var out = [Int32]()
        out.reserveCapacity(sym.count * 2)
        for k in sym.indices { out.append(sym[k]); out.append(len[k]) }
        cache.sym = sym; cache.len = len; cache.rank = rank; cache.newIds = newIds
        return out
    }

    /// The same merge order for long words in O(n log n): a min-heap of (rank, position)
    /// over a linked list of symbols; stale heap entries are skipped.
    private func mergeLong(_ sym: inout [Int32], _ len: inout [Int32]) {
        let n = sym.count
        var next = (0..<n).map { Int32($0 + 1) }
        var prev = (0..<n).map { Int32($0 - 1) }
        next[n - 1] = -1
        var heap: [UInt64] = []
        heap.reserveCapacity(n)
        func push(_ v: UInt64) {
            heap.append(v)
            var c = heap.count - 1
            while c > 0 {
                let p = (c - 1) / 2
                if heap[p] <= heap[c] { break }
                heap.swapAt(p, c); c = p
            }
        }
        func pop() -> UInt64? {
            guard let top = heap.first else { return nil }
            let last = heap.removeLast()
            if !heap.isEmpty {
                heap[0] = last
                var p = 0
                while true {
                    let l = 2 * p + 1, r = l + 1
                    var m = p
                    if l < heap.count, heap[l] < heap[m] { m = l }
                    if r < heap.count, heap[r] < heap[m] { m = r }
                    if m == p { break }
                    heap.swapAt(p, m); p = m
                }
            }
            return top
        }
        @inline(__always) func key(_ rank: Int32, _ pos: Int) -> UInt64 { UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(pos) }
        for i in 0..<(n - 1) { if let m = merges.get(sym[i], sym[i + 1]) { push(key(m.rank, i)) } }
        while let top = pop() {
            let pos = Int(top & 0xFFFF_FFFF), rank = Int32(truncatingIfNeeded: top >> 32)
            guard len[pos] > 0, next[pos] >= 0 else { continue }
            let nx = Int(next[pos])
            guard let m = merges.get(sym[pos], sym[nx]), m.rank == rank else { continue }
            sym[pos] = m.id
            len[pos] += len[nx]; len[nx] = 0
            next[pos] = next[nx]
            if next[nx] >= 0 { prev[Int(next[nx])] = Int32(pos) }
            if prev[pos] >= 0, let l = merges.get(sym[Int(prev[pos])], sym[pos]) { push(key(l.rank, Int(prev[pos]))) }
            if next[pos] >= 0, let r = merges.get(sym[pos], sym[Int(next[pos])]) { push(key(r.rank, pos)) }
        }
        var s2: [Int32] = [], l2: [Int32] = []
        var i = 0
        while i >= 0 {
            s2.append(sym[i]); l2.append(len[i])
            i = Int(next[i])
        }
        sym = s2; len = l2
    }

    // MARK: Per-thread caches

    package func takeCache() -> WordCache {
        lock.lock(); defer { lock.unlock() }
        return caches.popLast() ?? WordCache()
    }
    package func giveBack(_ c: WordCache) {
        lock.lock(); caches.append(c); lock.unlock()
    }
}

/// Open-addressing hash table from a pair of token ids to (merge rank, merged id).
package final class PairTable: @unchecked Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private let mask: Int

    package init(capacity: Int) {
        var n = 16
        while n < capacity * 2 { n <<= 1 }
        keys = [UInt64](repeating: .max, count: n)
        values = [UInt64](repeating: 0, count: n)
        mask = n - 1
    }

    @inline(__always) private func slot(_ k: UInt64) -> Int { Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> 20) & mask }

    package func put(_ a: Int32, _ b: Int32, rank: Int32, id: Int32) {
        let k = UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
        var s = slot(k)
        while keys[s] != .max && keys[s] != k { s = (s + 1) & mask }
        keys[s] = k
        values[s] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: id))
    }

    @inline(__always) package func get(_ a: Int32, _ b: Int32) -> (rank: Int32, id: Int32)? {
        let k = UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
        return keys.withUnsafeBufferPointer { kp in
            var s = slot(k)
            while true {
                let x = kp[s]
                if x == k {
                    let v = values[s]
                    return (Int32(truncatingIfNeeded: v >> 32), Int32(truncatingIfNeeded: v))
                }
                if x == .max { return nil }
                s = (s + 1) & mask
            }
        }
    }
}

/// Words already encoded, for one thread at a time, plus scratch space for merging.
package final class WordCache {
    package struct Short: Hashable { var a: UInt64; var b: UInt64; var n: Int }
    private var short: [Short: [Int32]] = [:]
    private var long: [[UInt8]: [Int32]] = [:]
    package var sym: [Int32] = [], len: [Int32] = [], rank: [Int32] = [], newIds: [Int32] = []
    package static let limit = 200_000

    @inline(__always) private func shortKey(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Short {
        var a: UInt64 = 0, c: UInt64 = 0
        var k = 0
        for i in r {
            let v = UInt64(b[i])
            if k < 8 { a |= v << (8 * UInt64(k)) } else { c |= v << (8 * UInt64(k - 8)) }
            k += 1
        }
        return Short(a: a, b: c, n: r.count)
    }

    package func get(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> [Int32]? {
        r.count <= 16 ? short[shortKey(b, r)] : long[Array(b[r])]
    }

    package func put(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>, _ v: [Int32]) {
        if r.count <= 16 {
            if short.count >= WordCache.limit { short.removeAll(keepingCapacity: true) }
            short[shortKey(b, r)] = v
        } else if r.count <= 256 {
            if long.count >= WordCache.limit { long.removeAll(keepingCapacity: true) }
            long[Array(b[r])] = v
        }
    }
}
