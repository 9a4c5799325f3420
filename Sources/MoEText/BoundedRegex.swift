import Foundation
import MoEFormats

/// A backtracking regex engine with a step limit, for the regexes tokenizer.json gives
/// (Split pre-tokenizers, Replace normalizers) with Oniguruma's semantics as Hugging Face
/// tokenizers runs them: leftmost alternative first, greedy/lazy/possessive quantifiers,
/// classes with \p{..} general categories, \s \d \w, lookahead and lookbehind, atomic groups,
/// (?i) case folding, ^ and $ at line boundaries. A pattern like `(a+)+$` backtracks
/// exponentially in any such engine: counting steps turns the hang into an error
/// (`StepLimit`) within a bounded time. Swift's Regex, which has no such limit, is used only
/// for a pattern with a construct this engine does not parse (a backreference, a script).
package final class BoundedRegex: @unchecked Sendable {
    package let source: String
    private let program: [Op]

    /// More steps than a find over `n` scalars may take.
    package static func stepLimit(scalars n: Int) -> Int { 1_000_000 + 2_000 * n }

    package struct StepLimit: Error {
        package let steps: Int
        package let scalars: Int
    }

    /// Nil when the pattern uses a construct the engine does not parse.
    package init?(_ source: String) {
        self.source = source
        var p = Parser(Array(source.unicodeScalars))
        guard let node = try? p.parseAlternation(), p.i == p.s.count else { return nil }
        var c = Compiler()
        guard (try? c.emit(node)) != nil else { return nil }
        c.ops.append(.match)
        program = c.ops
    }

    // MARK: Matching

    /// The non-empty matches in `b[range]` (UTF-8 byte ranges), left to right.
    package func matches(_ b: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) throws -> [Range<Int>] {
        var scalars: [UInt32] = [], offsets: [Int] = []
        scalars.reserveCapacity(range.count)
        offsets.reserveCapacity(range.count + 1)
        var i = range.lowerBound
        while i < range.upperBound {
            let (v, n) = decodeScalar(b, i)
            scalars.append(v); offsets.append(i)
            i += n
        }
        offsets.append(range.upperBound)
        var m = Matcher(s: scalars, limit: BoundedRegex.stepLimit(scalars: scalars.count))
        var out: [Range<Int>] = []
        var pos = 0
        while pos <= scalars.count {
            if let end = try m.run(program, from: 0, at: pos), end > pos {
                out.append(offsets[pos]..<offsets[end])
                pos = end
            } else {
                pos += 1
            }
        }
        return out
    }

    // MARK: Program

    fileprivate indirect enum Op {
        case char(UInt32, fold: Bool)
        case set(CharSet, fold: Bool)
        case any                      // . (not \n)
        case split(Int, Int)          // try the first, then the second
        case jump(Int)
        case assert(Anchor)
        case look(program: [Op], behind: Bool, negate: Bool, lengths: (min: Int, max: Int?))
        case atomic(program: [Op])
        case loopEnter(Int)           // register r = position
        case loopCheck(Int, exit: Int) // an iteration that matched empty: leave the loop
        case match
    }

    fileprivate enum Anchor { case lineStart, lineEnd, textStart, textEnd, textEndBeforeNewline, wordBoundary, notWordBoundary }

    fileprivate struct CharSet {
        var ranges: [(UInt32, UInt32)] = []
        var classes: [(ScalarPredicate, Bool)] = []   // predicate, negated
        var subsets: [CharSet] = []
        var negated = false

        /// With `fold`, a scalar is in the (positive) set when one of its case partners is.
        func contains(_ v: UInt32, fold: Bool) -> Bool {
            var positive = test(v)
            if fold, !positive { positive = BoundedRegex.caseVariants(v).contains { $0 != v && test($0) } }
            return positive != negated
        }

        private func test(_ v: UInt32) -> Bool {
            for (lo, hi) in ranges where v >= lo && v <= hi { return true }
            for (p, neg) in classes where p.matches(v) != neg { return true }
            for s in subsets where s.contains(v, fold: false) { return true }
            return false
        }
    }

    fileprivate enum ScalarPredicate {
        case mask(UInt8)                          // ScalarClass bits
        case category(Unicode.GeneralCategory)
        case categories([Unicode.GeneralCategory])
        case word, digit, space, any

        func matches(_ v: UInt32) -> Bool {
            switch self {
            case let .mask(m): return ScalarClass.of(v) & m != 0
            case .space: return ScalarClass.of(v) & ScalarClass.space != 0
            case .digit: return ScalarClass.of(v) & ScalarClass.decimal != 0
            case .word: return BoundedRegex.isWord(v)
            case .any: return true
            case let .category(c): return Unicode.Scalar(v)?.properties.generalCategory == c
            case let .categories(cs): return Unicode.Scalar(v).map { cs.contains($0.properties.generalCategory) } ?? false
            }
        }
    }

    /// Oniguruma's \w: Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
    fileprivate static func isWord(_ v: UInt32) -> Bool {
        let c = ScalarClass.of(v)
        if c & (ScalarClass.letter | ScalarClass.mark | ScalarClass.decimal) != 0 || v == 0x5F || v == 0x200C || v == 0x200D { return true }
        if v >= 0x80, let p = Unicode.Scalar(v)?.properties { return p.isAlphabetic || p.generalCategory == .connectorPunctuation }
        return false
    }

    /// The scalar and its simple case partners (lower, upper, title; ſ and K fold to s and k).
    fileprivate static func caseVariants(_ v: UInt32) -> [UInt32] {
        guard let s = Unicode.Scalar(v) else { return [v] }
        var out = [v]
        for m in [s.properties.lowercaseMapping, s.properties.uppercaseMapping, s.properties.titlecaseMapping] {
            let u = m.unicodeScalars
            if u.count == 1, let w = u.first?.value, !out.contains(w) { out.append(w) }
        }
        if v == 0x17F || v == 0x73 || v == 0x53 { for w: UInt32 in [0x73, 0x53, 0x17F] where !out.contains(w) { out.append(w) } }
        if v == 0x212A || v == 0x6B || v == 0x4B { for w: UInt32 in [0x6B, 0x4B, 0x212A] where !out.contains(w) { out.append(w) } }
        return out
    }

    // MARK: Parser

    fileprivate indirect enum Node {
        case empty
        case char(UInt32, fold: Bool)
        case set(CharSet, fold: Bool)
        case any
        case sequence([Node])
        case alternation([Node])
        case repeatNode(Node, min: Int, max: Int?, greedy: Bool, possessive: Bool)
        case assert(Anchor)
        case look(Node, behind: Bool, negate: Bool)
        case atomic(Node)
    }

    fileprivate struct Unsupported: Error {}

    fileprivate struct Parser {
        let s: [Unicode.Scalar]
        var i = 0
        var fold = false
        init(_ s: [Unicode.Scalar]) { self.s = s }

        var atEnd: Bool { i >= s.count }
        func peek(_ k: Int = 0) -> Unicode.Scalar? { i + k < s.count ? s[i + k] : nil }

        mutating func parseAlternation() throws -> Node {
            let saved = fold
            defer { fold = saved }
            var branches = [try parseSequence()]
            while peek() == "|" { i += 1; branches.append(try parseSequence()) }
            return branches.count == 1 ? branches[0] : .alternation(branches)
        }

        mutating func parseSequence() throws -> Node {
            var items: [Node] = []
            while let c = peek(), c != "|", c != ")" {
                // An inline flag group (?i) changes the rest of this group.
                if c == "(", peek(1) == "?", let f = inlineFlags() { fold = f; continue }
                var atom = try parseAtom()
                atom = try parseQuantifiers(atom)
                items.append(atom)
            }
            return items.count == 1 ? items[0] : .sequence(items)
        }

        /// `(?i)` / `(?-i)` alone: the new fold flag, the group consumed; nil otherwise.
        mutating func inlineFlags() -> Bool? {
            var k = i + 2, on = true, value: Bool?
            while k < s.count {
                switch s[k] {
                case "-": on = false
                case "i": value = on
                case ")": if let value { i = k + 1; return value } else { return nil }
                default: return nil
                }
                k += 1
            }
            return nil
        }

        mutating func parseQuantifiers(_ atom: Node) throws -> Node {
            var node = atom
            while let c = peek() {
                var lo = 0, hi: Int? = nil
                if c == "*" { lo = 0; hi = nil; i += 1 }
                else if c == "+" { lo = 1; hi = nil; i += 1 }
                else if c == "?" { lo = 0; hi = 1; i += 1 }
                else if c == "{", let (a, b, len) = counted() { lo = a; hi = b; i += len }
                else { break }
                if case .assert = node { throw Unsupported() }
                var greedy = true, possessive = false
                if peek() == "?" { greedy = false; i += 1 } else if peek() == "+" { possessive = true; i += 1 }
                guard lo <= 1000, (hi ?? 0) <= 1000, hi.map({ $0 >= lo }) ?? true else { throw Unsupported() }
                node = .repeatNode(node, min: lo, max: hi, greedy: greedy, possessive: possessive)
            }
            return node
        }

        /// {n}, {n,}, {n,m}, {,m} at i: (min, max, length); nil when not a quantifier (a literal {).
        func counted() -> (Int, Int?, Int)? {
            var k = i + 1
            func number() -> Int? {
                var v: Int?
                while k < s.count, let d = Int(String(s[k])), s[k].isASCII {
                    v = min((v ?? 0) * 10 + d, 100_000); k += 1
                }
                return v
            }
            let a = number()
            if k < s.count, s[k] == "}" { guard let a else { return nil }; return (a, a, k + 1 - i) }
            guard k < s.count, s[k] == "," else { return nil }
            k += 1
            let b = number()
            guard k < s.count, s[k] == "}", a != nil || b != nil else { return nil }
            return (a ?? 0, b, k + 1 - i)
        }

        mutating func parseAtom() throws -> Node {
            let c = s[i]
            i += 1
            switch c {
            case "(":
                var behind = false, negate = false, kind = "group"
                if peek() == "?" {
                    i += 1
                    guard let d = peek() else { throw Unsupported() }
                    switch d {
                    case ":": i += 1
                    case "=": i += 1; kind = "look"
                    case "!": i += 1; kind = "look"; negate = true
                    case ">": i += 1; kind = "atomic"
                    case "<":
                        if peek(1) == "=" { i += 2; kind = "look"; behind = true }
                        else if peek(1) == "!" { i += 2; kind = "look"; behind = true; negate = true }
                        else { try skipName(">") }
                    case "P":
                        guard peek(1) == "<" else { throw Unsupported() }
                        i += 1; try skipName(">")
                    case "i", "-":
                        // (?i:...) / (?-i:...)
                        var on = true, value: Bool?
                        while let e = peek(), e != ":" {
                            if e == "-" { on = false } else if e == "i" { value = on } else { throw Unsupported() }
                            i += 1
                        }
                        guard peek() == ":", let value else { throw Unsupported() }
                        i += 1
                        let saved = fold
                        fold = value
                        let inner = try parseAlternation()
                        fold = saved
                        guard peek() == ")" else { throw Unsupported() }
                        i += 1
                        return inner
                    default: throw Unsupported()
                    }
                }
                let inner = try parseAlternation()
                guard peek() == ")" else { throw Unsupported() }
                i += 1
                switch kind {
                case "look": return .look(inner, behind: behind, negate: negate)
                case "atomic": return .atomic(inner)
                default: return inner
                }
            case ")": throw Unsupported()
            case "[": return .set(try parseClass(), fold: fold)
            case ".": return .any
            case "^": return .assert(.lineStart)
            case "$": return .assert(.lineEnd)
            case "\\": return try parseEscape(inClass: false).node(fold: fold)
            case "*", "+", "?": throw Unsupported()
            default: return .char(c.value, fold: fold)
            }
        }

        mutating func skipName(_ close: Unicode.Scalar) throws {
            i += 1
            while let e = peek(), e != close {
                guard e.properties.isAlphabetic || e == "_" || (e.isASCII && e.properties.numericType != nil) else { throw Unsupported() }
                i += 1
            }
            guard peek() == close else { throw Unsupported() }
            i += 1
        }

        enum Escape {
            case char(UInt32)
            case predicate(ScalarPredicate, negated: Bool)
            case anchor(Anchor)

            func node(fold: Bool) -> Node {
                switch self {
                case let .char(v): return .char(v, fold: fold)
                case let .predicate(p, neg): var cs = CharSet(); cs.classes = [(p, neg)]; return .set(cs, fold: false)
                case let .anchor(a): return .assert(a)
                }
            }
        }

        mutating func parseEscape(inClass: Bool) throws -> Escape {
            guard let c = peek() else { throw Unsupported() }
            i += 1
            switch c {
            case "t": return .char(0x09)
            case "n": return .char(0x0A)
            case "r": return .char(0x0D)
            case "f": return .char(0x0C)
            case "v": return .char(0x0B)
            case "a": return .char(0x07)
            case "e": return .char(0x1B)
            case "0": return .char(0)
            case "s": return .predicate(.space, negated: false)
            case "S": return .predicate(.space, negated: true)
            case "d": return .predicate(.digit, negated: false)
            case "D": return .predicate(.digit, negated: true)
            case "w": return .predicate(.word, negated: false)
            case "W": return .predicate(.word, negated: true)
            case "p", "P":
                var name = ""
                if peek() == "{" {
                    i += 1
                    while let e = peek(), e != "}" { name.unicodeScalars.append(e); i += 1 }
                    guard peek() == "}" else { throw Unsupported() }
                    i += 1
                } else if let e = peek() { name = String(e); i += 1 }
                var negated = c == "P"
                if name.hasPrefix("^") { negated.toggle(); name.removeFirst() }
                guard let p = Parser.category(name) else { throw Unsupported() }
                return .predicate(p, negated: negated)
            case "x":
                var hex = ""
                if peek() == "{" {
                    i += 1
                    while let e = peek(), e != "}" { hex.unicodeScalars.append(e); i += 1 }
                    i += 1
                } else {
                    for _ in 0..<2 { if let e = peek(), e.properties.isASCIIHexDigit { hex.unicodeScalars.append(e); i += 1 } }
                }
                guard let v = UInt32(hex, radix: 16), Unicode.Scalar(v) != nil else { throw Unsupported() }
                return .char(v)
            case "u":
                var hex = ""
                for _ in 0..<4 { if let e = peek(), e.properties.isASCIIHexDigit { hex.unicodeScalars.append(e); i += 1 } }
                guard hex.count == 4, let v = UInt32(hex, radix: 16), Unicode.Scalar(v) != nil else { throw Unsupported() }
                return .char(v)
            case "b" where !inClass: return .anchor(.wordBoundary)
            case "B" where !inClass: return .anchor(.notWordBoundary)
            case "A" where !inClass: return .anchor(.textStart)
            case "z" where !inClass: return .anchor(.textEnd)
            case "Z" where !inClass: return .anchor(.textEndBeforeNewline)
            default:
                // An escaped symbol stands for itself; letters and digits not listed above
                // (\h, \k, \1, \G, ...) are constructs this engine does not know.
                guard !(c.properties.isAlphabetic || c.properties.numericType != nil) else { throw Unsupported() }
                return .char(c.value)
            }
        }

        static func category(_ name: String) -> ScalarPredicate? {
            typealias G = Unicode.GeneralCategory
            let two: [String: G] = [
                "Lu": .uppercaseLetter, "Ll": .lowercaseLetter, "Lt": .titlecaseLetter, "Lm": .modifierLetter, "Lo": .otherLetter,
                "Mn": .nonspacingMark, "Mc": .spacingMark, "Me": .enclosingMark, "Nd": .decimalNumber, "Nl": .letterNumber,
                "No": .otherNumber, "Pc": .connectorPunctuation, "Pd": .dashPunctuation, "Ps": .openPunctuation,
                "Pe": .closePunctuation, "Pi": .initialPunctuation, "Pf": .finalPunctuation, "Po": .otherPunctuation,
                "Sm": .mathSymbol, "Sc": .currencySymbol, "Sk": .modifierSymbol, "So": .otherSymbol, "Zs": .spaceSeparator,
                "Zl": .lineSeparator, "Zp": .paragraphSeparator, "Cc": .control, "Cf": .format, "Cs": .surrogate,
                "Co": .privateUse, "Cn": .unassigned,
            ]
            switch name {
            case "L", "Letter": return .mask(ScalarClass.letter)
            case "N", "Number": return .mask(ScalarClass.number)
            case "M", "Mark": return .mask(ScalarClass.mark)
            case "P", "Punctuation": return .mask(ScalarClass.punct)
            case "S", "Symbol": return .mask(ScalarClass.symbol)
            case "Z", "Separator": return .categories([.spaceSeparator, .lineSeparator, .paragraphSeparator])
            case "C", "Other": return .categories([.control, .format, .surrogate, .privateUse, .unassigned])
            case "Any": return .any
            default: return two[name].map { .category($0) }
            }
        }

        mutating func parseClass() throws -> CharSet {
            var cs = CharSet()
            if peek() == "^" { cs.negated = true; i += 1 }
            var first = true
            while let c = peek(), c != "]" || first {
                first = false
                if c == "[" {
                    if peek(1) == ":" { throw Unsupported() }   // POSIX bracket
                    i += 1
                    cs.subsets.append(try parseClass())
                    continue
                }
                if c == "&", peek(1) == "&" { throw Unsupported() }
                var lo: UInt32
                i += 1
                if c == "\\" {
                    switch try parseEscape(inClass: true) {
                    case let .char(v): lo = v
                    case let .predicate(p, neg): cs.classes.append((p, neg)); continue
                    case .anchor: throw Unsupported()
                    }
                } else {
                    lo = c.value
                }
                if peek() == "-", let n = peek(1), n != "]" {
                    i += 1
                    var hi: UInt32
                    if n == "\\" {
                        i += 1
                        guard case let .char(v) = try parseEscape(inClass: true) else { throw Unsupported() }
                        hi = v
                    } else { hi = n.value; i += 1 }
                    guard hi >= lo else { throw Unsupported() }
                    cs.ranges.append((lo, hi))
                } else {
                    cs.ranges.append((lo, lo))
                }
            }
            guard peek() == "]" else { throw Unsupported() }
            i += 1
            return cs
        }
    }

    /// The fewest and most scalars a node can match (nil: no bound).
    fileprivate static func lengths(_ n: Node) -> (min: Int, max: Int?) {
        switch n {
        case .empty, .assert, .look: return (0, 0)
        case .char, .set, .any: return (1, 1)
        case let .sequence(items):
            var lo = 0, hi: Int? = 0
            for x in items {
                let l = lengths(x)
                lo += l.min
                hi = hi.flatMap { h in l.max.map { h + $0 } }
            }
            return (lo, hi)
        case let .alternation(bs):
            let ls = bs.map(lengths)
            return (ls.map(\.min).min() ?? 0, ls.contains { $0.max == nil } ? nil : ls.compactMap(\.max).max() ?? 0)
        case let .repeatNode(x, lo, hi, _, _):
            let l = lengths(x)
            return (l.min * lo, hi.flatMap { h in l.max.map { $0 * h } })
        case let .atomic(x): return lengths(x)
        }
    }

    // MARK: Compiler

    fileprivate struct Compiler {
        var ops: [Op] = []
        var registers = 0

        mutating func emit(_ n: Node) throws {
            guard ops.count < 200_000 else { throw Unsupported() }
            switch n {
            case .empty: break
            case let .char(v, fold): ops.append(.char(v, fold: fold))
            case let .set(cs, fold): ops.append(.set(cs, fold: fold))
            case .any: ops.append(.any)
            case let .sequence(items): for x in items { try emit(x) }
            case let .alternation(branches):
                var jumps: [Int] = []
                for (k, b) in branches.enumerated() {
                    if k < branches.count - 1 {
                        let split = ops.count
                        ops.append(.split(0, 0))
                        try emit(b)
                        jumps.append(ops.count)
                        ops.append(.jump(0))
                        ops[split] = .split(split + 1, ops.count)
                    } else {
                        try emit(b)
                    }
                }
                for j in jumps { ops[j] = .jump(ops.count) }
            case let .assert(a): ops.append(.assert(a))
            case let .look(inner, behind, negate):
                // Oniguruma allows only a bounded lookbehind; its lengths limit the starts tried.
                if behind, BoundedRegex.lengths(inner).max == nil { throw Unsupported() }
                var c = Compiler()
                try c.emit(inner)
                c.ops.append(.match)
                ops.append(.look(program: c.ops, behind: behind, negate: negate, lengths: BoundedRegex.lengths(inner)))
            case let .atomic(inner):
                var c = Compiler()
                try c.emit(inner)
                c.ops.append(.match)
                ops.append(.atomic(program: c.ops))
            case let .repeatNode(inner, lo, hi, greedy, possessive):
                if possessive {
                    try emit(.atomic(.repeatNode(inner, min: lo, max: hi, greedy: true, possessive: false)))
                    return
                }
                for _ in 0..<lo { try emit(inner) }
                if let hi {
                    // (hi - lo) optional copies, each tried (greedy) or skipped (lazy) first.
                    var exits: [Int] = []
                    for _ in lo..<hi {
                        let split = ops.count
                        ops.append(.split(0, 0))
                        exits.append(split)
                        try emit(inner)
                    }
                    for s in exits { ops[s] = greedy ? .split(s + 1, ops.count) : .split(ops.count, s + 1) }
                } else {
                    // loop: split(body, exit); body; loopCheck; jump loop
                    let r = registers
                    registers += 1
                    let loop = ops.count
                    ops.append(.split(0, 0))
                    ops.append(.loopEnter(r))
                    try emit(inner)
                    let check = ops.count
                    ops.append(.loopCheck(r, exit: 0))
                    ops.append(.jump(loop))
                    let exit = ops.count
                    ops[loop] = greedy ? .split(loop + 1, exit) : .split(exit, loop + 1)
                    ops[check] = .loopCheck(r, exit: exit)
                }
            }
        }
    }

    // MARK: Matcher

    fileprivate struct Matcher {
        let s: [UInt32]
        let limit: Int
        var steps = 0

        init(s: [UInt32], limit: Int) { self.s = s; self.limit = limit }

        private enum Frame { case thread(pc: Int, pos: Int), register(Int, Int) }

        /// The end of the first match of `program` anchored at `start` (nil: none). With
        /// `mustEnd`, only a match ending there counts (lookbehind).
        mutating func run(_ program: [Op], from pc0: Int, at start: Int, mustEnd: Int? = nil) throws -> Int? {
            var stack: [Frame] = [.thread(pc: pc0, pos: start)]
            var regs: [Int] = []
            while let frame = stack.popLast() {
                var pc: Int, pos: Int
                switch frame {
                case let .register(r, v): regs[r] = v; continue
                case let .thread(p, q): pc = p; pos = q
                }
                thread: while true {
                    steps += 1
                    if steps > limit { throw StepLimit(steps: limit, scalars: s.count) }
                    switch program[pc] {
                    case .match:
                        if let mustEnd, pos != mustEnd { break thread }
                        return pos
                    case let .char(v, fold):
                        guard pos < s.count else { break thread }
                        let w = s[pos]
                        if w == v || (fold && BoundedRegex.caseVariants(w).contains(v)) { pos += 1; pc += 1 } else { break thread }
                    case let .set(cs, fold):
                        guard pos < s.count, cs.contains(s[pos], fold: fold) else { break thread }
                        pos += 1; pc += 1
                    case .any:
                        guard pos < s.count, s[pos] != 0x0A else { break thread }
                        pos += 1; pc += 1
                    case let .split(a, b):
                        stack.append(.thread(pc: b, pos: pos))
                        pc = a
                    case let .jump(t): pc = t
                    case let .assert(a):
                        guard holds(a, pos) else { break thread }
                        pc += 1
                    case let .look(sub, behind, negate, lengths):
                        var found = false
                        if behind {
                            var j = pos - lengths.min
                            let lowest = max(0, pos - (lengths.max ?? pos))
                            while j >= lowest, !found {
                                if try run(sub, from: 0, at: j, mustEnd: pos) != nil { found = true }
                                j -= 1
                            }
                        } else {
                            found = try run(sub, from: 0, at: pos) != nil
                        }
                        guard found != negate else { break thread }
                        pc += 1
                    case let .atomic(sub):
                        guard let end = try run(sub, from: 0, at: pos) else { break thread }
                        pos = end; pc += 1
                    case let .loopEnter(r):
                        while regs.count <= r { regs.append(-1) }
                        stack.append(.register(r, regs[r]))
                        regs[r] = pos
                        pc += 1
                    case let .loopCheck(r, exit):
                        // An iteration that consumed nothing ends the loop (no endless empty loop).
                        pc = regs[r] == pos ? exit : pc + 1
                    }
                }
            }
            return nil
        }

        private func holds(_ a: Anchor, _ pos: Int) -> Bool {
            switch a {
            case .lineStart: return pos == 0 || s[pos - 1] == 0x0A
            case .lineEnd: return pos == s.count || s[pos] == 0x0A
            case .textStart: return pos == 0
            case .textEnd: return pos == s.count
            case .textEndBeforeNewline: return pos == s.count || (pos == s.count - 1 && s[pos] == 0x0A)
            case .wordBoundary, .notWordBoundary:
                let before = pos > 0 && BoundedRegex.isWord(s[pos - 1])
                let after = pos < s.count && BoundedRegex.isWord(s[pos])
                return (before != after) == (a == .wordBoundary)
            }
        }
    }
}
