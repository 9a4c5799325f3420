import Foundation
import MoEFormats

/// jinja2's filters and tests (`x | f`, `x is t`) with its argument names and defaults, and
/// the globals transformers gives templates.
extension JinjaBuiltins {
    package static func applyFilter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int) throws -> JinjaValue {
        func b(_ names: [String]) throws -> [JinjaValue?] { try bind(name, names, args, kwargs) }
        /// The value, unless the sandbox refused it.
        func strict(_ x: JinjaValue) throws -> JinjaValue {
            if let m = x.unsafeMessage { throw fail(m) }
            return x
        }
        switch name {
        case "default", "d":
            let a = try b(["default_value", "boolean"])
            if v.isUndefined || ((a[1]?.truthy ?? false) && !v.truthy) { return a[0] ?? .string("") }
            return v
        case "length", "count":
            switch v {
            case let .string(s): return .int(s.unicodeScalars.count)
            case let .list(x), let .tuple(x): return .int(x.count)
            case let .dict(d): return .int(d.count)
            case .undefined: _ = try strict(v); return .int(0)
            case let .namespace(ns): return .int(ns.attributes.count)
            default: throw fail("object of type '\(v.typeName)' has no len()")
            }
        case "string": return .string(try text(try strict(v), "the string filter"))
        case "safe": return .string(try text(try strict(v), "the safe filter"))
        case "upper": return .string(try strict(v).str.uppercased())
        case "lower": return .string(try strict(v).str.lowercased())
        case "capitalize": return .string(pyCapitalize(try strict(v).str))
        case "title":
            // jinja2: split before runs of "-", whitespace, "(", "{", "[", "<"; capitalize every piece.
            var out = ""
            var piece = String.UnicodeScalarView()
            var pieceIsSep: Bool?
            func flush() {
                guard let f = piece.first else { return }
                var rest = String.UnicodeScalarView()
                rest.append(contentsOf: piece.dropFirst())
                out += String(f).uppercased() + String(rest).lowercased()
                piece = String.UnicodeScalarView()
            }
            for u in try strict(v).str.unicodeScalars {
                let sep = u == "-" || u == "(" || u == "{" || u == "[" || u == "<" || JinjaLexer.isSpace(u)
                if pieceIsSep != sep { flush(); pieceIsSep = sep }
                piece.append(u)
            }
            flush()
            return .string(out)
        case "trim":
            let a = try b(["chars"])
            return .string(pyStrip(try strict(v).str, try strArg(a[0], "trim chars"), left: true, right: true))
        case "replace":
            let a = try b(["old", "new", "count"])
            guard let old = a[0], let new = a[1] else { throw fail("replace() missing required arguments") }
            return .string(try replace(try text(try strict(v), "replace"), try text(old, "replace"), try text(new, "replace"), count: a[2].flatMap(intIndex) ?? -1))
        case "first":
            return try iterate(v, line: line).first ?? .undefined(hint: "No first item, sequence was empty.")
        case "last":
            switch v {
            case .list, .tuple, .string, .dict: break
            default: throw fail("'\(v.typeName)' object is not reversible")
            }
            return try iterate(v, line: line).last ?? .undefined(hint: "No last item, sequence was empty.")
        case "list": return .list(try iterate(v, line: line))
        case "reverse":
            if case let .string(s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            switch v {
            case .list, .tuple, .dict, .undefined: break
            default: throw fail("argument must be iterable")
            }
            return .list(try iterate(v, line: line).reversed())
        case "join":
            let a = try b(["d", "attribute"])
            var items = try iterate(v, line: line)
            if let attr = a[1], attr.numeric != nil || attr.typeName == "str" {
                items = try items.map { try attributeGetter(attr)($0) }
            }
            let parts = try items.map { try text($0, "join") }, sep = try a[0].map { try text($0, "join") } ?? ""
            try JinjaBudget.check(parts.reduce(0) { $0 + $1.utf8.count } + max(parts.count - 1, 0) * sep.utf8.count, "join")
            return .string(parts.joined(separator: sep))
        case "int":
            let a = try b(["default", "base"])
            let def = a[0] ?? .int(0)
            let base = a[1].flatMap(intIndex) ?? 10
            switch v {
            case let .int(i): return .int(i)
            case let .bool(x): return .int(x ? 1 : 0)
            case let .float(d): return d.isFinite && abs(d) < 9.2e18 ? .int(Int(d)) : def
            case let .string(s):
                let t = pyStrip(s, nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
                if let i = Int(t, radix: base) { return .int(i) }
                if let d = Double(t), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d)) }
                return def
            case .undefined: throw fail(undefinedMessage(v) ?? "undefined")
            default: return def
            }
        case "float":
            let a = try b(["default"])
            let def = a[0] ?? .float(0)
            switch v {
            case let .int(i): return .float(Double(i))
            case let .bool(x): return .float(x ? 1 : 0)
            case let .float(d): return .float(d)
            case let .string(s):
                let t = pyStrip(s, nil, left: true, right: true).lowercased()
                if let d = Double(t) { return .float(d) }
                return def
            case .undefined: throw fail(undefinedMessage(v) ?? "undefined")
            default: return def
            }
        case "abs":
            switch v {
            case let .int(i):
                guard i != Int.min else { throw fail("integer overflow") }
                return .int(abs(i))
            case let .bool(x): return .int(x ? 1 : 0)
            case let .float(d): return .float(abs(d))
            default: throw fail("bad operand type for abs(): '\(v.typeName)'")
            }
        case "round":
            let a = try b(["precision", "method"])
            let p = a[0].flatMap(intIndex) ?? 0
            let method = a[1]?.str ?? "common"
            guard ["common", "ceil", "floor"].contains(method) else { throw fail("method must be 'common', 'ceil' or 'floor'") }
            guard let x = v.numeric else { throw fail("type \(v.typeName) doesn't define __round__ method") }
            if method == "common", let i = intIndex(v) { return .int(i) }
            let scale = pow(10.0, Double(p))
            switch method {
            case "ceil": return .float((x * scale).rounded(.up) / scale)
            case "floor": return .float((x * scale).rounded(.down) / scale)
            default: return .float((x * scale).rounded(.toNearestOrEven) / scale)
            }
        case "tojson":
            let a = try b(["ensure_ascii", "indent", "separators", "sort_keys"])
            var indent: String?
            switch a[1] {
            case let .int(n)?:
                guard n <= 10_000 else { throw fail("tojson: indent too large") }
                indent = String(repeating: " ", count: max(n, 0))
            case let .string(s)?: indent = s
            case nil, .none?: indent = nil
            default: throw fail("tojson: indent must be an int or a string")
            }
            var item: String?, key: String?
            if let sep = a[2], sep.typeName != "NoneType" {
                let parts = try iterate(sep, line: line)
                guard parts.count == 2, case let .string(i) = parts[0], case let .string(k) = parts[1] else {
                    throw fail("tojson: separators must be a pair of strings")
                }
                item = i; key = k
            }
            return .string(try JinjaJSON.dumps(v, ensureASCII: a[0]?.truthy ?? false, indent: indent,
                                               itemSeparator: item, keySeparator: key, sortKeys: a[3]?.truthy ?? false))
        case "items":
            switch v {
            case let .dict(d): return .list(d.pairs.map { .tuple([$0.0, $0.1]) })
            case .undefined: return .list([])
            default: throw fail("Can only get item pairs from a mapping.")
            }
        case "e", "escape", "forceescape":
            var out = ""
            for c in try strict(v).str.unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "indent":
            let a = try b(["width", "first", "blank"])
            let ind: String
            switch a[0] {
            case let .string(s)?: ind = s
            case nil: ind = "    "
            case let w?:
                guard let n = intIndex(w) else { throw fail("indent width must be an int or a string") }
                guard n <= 10_000 else { throw fail("indent width too large") }
                ind = String(repeating: " ", count: max(n, 0))
            }
            // jinja2 appends "\n" to the value itself: only strings work.
            guard case let .string(text) = v else {
                if case .list = v { throw fail("'list' object has no attribute 'splitlines'") }
                if let m = undefinedMessage(v) { throw fail(m) }
                throw fail("unsupported operand type(s) for +=: '\(v.typeName)' and 'str'")
            }
            let s = text + "\n"
            var lines = splitLines(s)
            try JinjaBudget.check(s.utf8.count + (lines.count + 1) * ind.utf8.count, "indent")
            var rv: String
            if a[2]?.truthy ?? false {
                rv = lines.joined(separator: "\n" + ind)
            } else {
                rv = lines.isEmpty ? "" : lines.removeFirst()
                if !lines.isEmpty { rv += "\n" + lines.map { $0.isEmpty ? $0 : ind + $0 }.joined(separator: "\n") }
            }
            if a[1]?.truthy ?? false { rv = ind + rv }
            return .string(rv)
        case "center":
            let a = try b(["width"])
            let w = a[0].flatMap(intIndex) ?? 80
            let s = try strict(v).str
            let n = s.unicodeScalars.count
            guard w > n else { return .string(s) }
            guard w <= JinjaEvaluator.maxOutputBytes else { throw fail("center width too large") }
            let marg = w - n
            let left = marg / 2 + (marg & w & 1)
            return .string(String(repeating: " ", count: left) + s + String(repeating: " ", count: marg - left))
        case "wordcount":
            var count = 0, inWord = false
            for u in try strict(v).str.unicodeScalars {
                let w = u == "_" || u.properties.isAlphabetic || u.properties.numericType != nil
                if w && !inWord { count += 1 }
                inWord = w
            }
            return .int(count)
        case "attr":
            guard case let .string(n)? = args.first else { throw fail("attr() needs an attribute name") }
            return try getAttribute(v, n, line: line)
        case "format":
            return .string(try percentFormat(try strict(v).str, .tuple(args)))
        case "map":
            // jinja2 iterates only a truthy value (so 0 | map(…) is empty).
            let items = v.truthy ? try iterate(v, line: line) : []
            if let attrArg = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                let def = kwargs.first(where: { $0.0 == "default" })?.1
                let get = attributeGetter(attrArg)
                return .list(try items.map { item in
                    let r = try get(item)
                    if r.isUndefined, let def { return def }
                    return r
                })
            }
            guard case let .string(f)? = args.first else { throw fail("map requires a filter name or attribute=") }
            guard filters.contains(f) else { throw fail("no filter named '\(f)'") }
            let rest = Array(args.dropFirst())
            return .list(try items.map { try applyFilter(f, $0, rest, kwargs, line: line) })
        case "select", "reject":
            let items = v.truthy ? try iterate(v, line: line) : []
            let keep = name == "select"
            guard case let .string(t)? = args.first else { return .list(items.filter { $0.truthy == keep }) }
            guard tests.contains(t) else { throw fail("no test named '\(t)'") }
            let rest = Array(args.dropFirst())
            return .list(try items.filter { try applyTest(t, $0, rest, line: line) == keep })
        case "selectattr", "rejectattr":
            let items = v.truthy ? try iterate(v, line: line) : []
            let keep = name == "selectattr"
            guard let attr = args.first else { throw fail("\(name) requires an attribute name") }
            let get = attributeGetter(attr)
            guard args.count > 1, case let .string(t) = args[1] else {
                return .list(try items.filter { try get($0).truthy == keep })
            }
            guard tests.contains(t) else { throw fail("no test named '\(t)'") }
            let rest = Array(args.dropFirst(2))
            return .list(try items.filter { try applyTest(t, try get($0), rest, line: line) == keep })
        case "unique":
            let a = try b(["case_sensitive", "attribute"])
            let cs = a[0]?.truthy ?? false
            let get = a[1].map { attributeGetter($0) }
            var seen: [JinjaValue] = []
            var out: [JinjaValue] = []
            for item in try iterate(v, line: line) {
                var key = try get?(item) ?? item
                if !cs, case let .string(s) = key { key = .string(s.lowercased()) }
                if !seen.contains(where: { $0.pyEquals(key) }) { seen.append(key); out.append(item) }
            }
            return .list(out)
        case "sort":
            let a = try b(["reverse", "case_sensitive", "attribute"])
            let rev = a[0]?.truthy ?? false
            let cs = a[1]?.truthy ?? false
            // With attribute= jinja2 sorts by the list of the (comma-separated) attributes' values,
            // so items whose values are all missing compare equal instead of failing.
            let getters = a[2].map { attr in attr.str.split(separator: ",").map { attributeGetter(.string(String($0).trimmingCharacters(in: .whitespaces))) } }
            let items = try iterate(v, line: line)
            var keyed: [(JinjaValue, JinjaValue)] = try items.map { item in
                func fold(_ k: JinjaValue) -> JinjaValue {
                    if !cs, case let .string(s) = k { return .string(s.lowercased()) }
                    return k
                }
                if let getters { return (.list(try getters.map { fold(try $0(item)) }), item) }
                return (fold(item), item)
            }
            keyed = try stableSort(keyed, reverse: rev)
            return .list(keyed.map(\.1))
        case "dictsort":
            let a = try b(["case_sensitive", "by", "reverse"])
            guard case let .dict(d) = v else { throw fail(undefinedMessage(v) ?? "'\(v.typeName)' object has no attribute 'items'") }
            guard a[1] == nil || ["key", "value"].contains(a[1]?.str ?? "") else { throw fail("You can only sort by either 'key' or 'value'") }
            let cs = a[0]?.truthy ?? false
            let byValue = a[1]?.str == "value"
            var keyed: [(JinjaValue, JinjaValue)] = d.pairs.map { pair in
                var key = byValue ? pair.1 : pair.0
                if !cs, case let .string(s) = key { key = .string(s.lowercased()) }
                return (key, .tuple([pair.0, pair.1]))
            }
            keyed = try stableSort(keyed, reverse: a[2]?.truthy ?? false)
            return .list(keyed.map(\.1))
        case "sum":
            let a = try b(["attribute", "start"])
            let get = a[0].map { attributeGetter($0) }
            var total = a[1] ?? .int(0)
            for item in try iterate(v, line: line) { total = try binary("+", total, try get?(item) ?? item) }
            return total
        case "min", "max":
            let a = try b(["case_sensitive", "attribute"])
            let cs = a[0]?.truthy ?? false
            let get = a[1].map { attributeGetter($0) }
            var best: (JinjaValue, JinjaValue)?
            for item in try iterate(v, line: line) {
                var key = try get?(item) ?? item
                if !cs, case let .string(s) = key { key = .string(s.lowercased()) }
                if let cur = best {
                    let better = name == "min" ? try compare("<", key, cur.0) : try compare(">", key, cur.0)
                    if better { best = (key, item) }
                } else { best = (key, item) }
            }
            return best?.1 ?? .undefined(hint: "No aggregated item, sequence was empty.")
        case "batch":
            let a = try b(["linecount", "fill_with"])
            guard let n = a[0].flatMap(intIndex), n > 0 else { throw fail("batch needs a positive line count") }
            var out: [JinjaValue] = []
            var cur: [JinjaValue] = []
            for item in try iterate(v, line: line) {
                cur.append(item)
                if cur.count == n { out.append(.list(cur)); cur = [] }
            }
            if !cur.isEmpty {
                if let fill = a[1], !({ if case .none = fill { return true } else { return false } }()) {
                    while cur.count < n { cur.append(fill) }
                }
                out.append(.list(cur))
            }
            return .list(out)
        default:
            throw fail("the '\(name)' filter is not supported")
        }
    }

    /// A stable sort by key that compares in the order CPython's list.sort does for short
    /// lists (the first run, then binary insertion), so a pair that cannot be ordered is found
    /// and named as Python names it. reverse keeps equal items in their order, as Python does.
    package static func stableSort(_ keyed: [(JinjaValue, JinjaValue)], reverse: Bool) throws -> [(JinjaValue, JinjaValue)] {
        var a = reverse ? Array(keyed.reversed()) : keyed
        func less(_ x: JinjaValue, _ y: JinjaValue) throws -> Bool { try compare("<", x, y) }
        guard a.count > 1 else { return a }
        // The first run: strictly descending (reversed in place) or non-descending.
        var run = 2
        if try less(a[1].0, a[0].0) {
            while run < a.count, try less(a[run].0, a[run - 1].0) { run += 1 }
            a[0..<run].reverse()
        } else {
            while run < a.count, !(try less(a[run].0, a[run - 1].0)) { run += 1 }
        }
        for start in run..<a.count {
            let pivot = a[start]
            var l = 0, r = start
            while l < r {
                let p = l + (r - l) >> 1
                if try less(pivot.0, a[p].0) { r = p } else { l = p + 1 }
            }
            a.remove(at: start)
            a.insert(pivot, at: l)
        }
        return reverse ? a.reversed() : a
    }

    /// jinja2's make_attrgetter: "a.b.0" looks up item by item (integers as indices).
    package static func attributeGetter(_ attr: JinjaValue) -> (JinjaValue) throws -> JinjaValue {
        let parts: [JinjaValue]
        if case let .string(s) = attr {
            parts = s.split(separator: ".", omittingEmptySubsequences: false).map { p in Int(p).map { .int($0) } ?? .string(String(p)) }
        } else { parts = [attr] }
        return { item in
            var cur = item
            for p in parts { cur = try getItem(cur, p, line: 0) }
            return cur
        }
    }

    package static func applyTest(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], line: Int) throws -> Bool {
        func arg() throws -> JinjaValue {
            guard let a = args.first else { throw fail("the '\(name)' test needs an argument") }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "integer": if case .int = v { return true }; return false
        case "float": if case .float = v { return true }; return false
        case "number": return v.numeric != nil
        case "string": if case .string = v { return true }; return false
        case "mapping": if case .dict = v { return true }; return false
        case "iterable", "sequence":
            switch v {
            case .list, .tuple, .dict, .string, .undefined: return true
            default: return false
            }
        case "callable": if case .function = v { return true }; return false
        case "odd", "even":
            if let i = intIndex(v) { return (i & 1 == 1) == (name == "odd") }
            return try binary("%", v, .int(2)).pyEquals(.int(name == "odd" ? 1 : 0))
        case "divisibleby":
            let m = try binary("%", v, try arg())
            return m.pyEquals(.int(0))
        case "eq", "equalto": return v.pyEquals(try arg())
        case "ne": return !v.pyEquals(try arg())
        case "lt", "lessthan": return try compare("<", v, try arg())
        case "le": return try compare("<=", v, try arg())
        case "gt", "greaterthan": return try compare(">", v, try arg())
        case "ge": return try compare(">=", v, try arg())
        case "in": return try contains(try arg(), v)
        case "lower": let s = v.str; return s.unicodeScalars.contains { $0.properties.isCased } && s == s.lowercased()
        case "upper": let s = v.str; return s.unicodeScalars.contains { $0.properties.isCased } && s == s.uppercased()
        case "sameas":
            let o = try arg()
            switch (v, o) {
            case (.none, .none): return true
            case let (.bool(a), .bool(b)): return a == b
            case let (.int(a), .int(b)): return a == b && a >= -5 && a <= 256  // CPython's cached small ints
            case (.namespace, .namespace), (.function, .function): return v.pyEquals(o)
            default: return false
            }
        case "escaped": return false
        case "filter": return filters.contains(v.str)
        case "test": return tests.contains(v.str)
        default: throw fail("the '\(name)' test is not supported")
        }
    }

    /// The globals of transformers' environment: jinja2's `range`, `dict`, `namespace` and
    /// `joiner` (not `cycler` or `lipsum`), and transformers' `raise_exception` and
    /// `strftime_now` (its clock injectable for tests).
    package static func globals(now: @escaping () -> Date) -> [String: JinjaValue] {
        var g: [String: JinjaValue] = [:]
        g["range"] = fn("range") { a, _ in
            let n = try a.map { v -> Int in
                guard let i = intIndex(v) else { throw fail("'\(v.typeName)' object cannot be interpreted as an integer") }
                return i
            }
            let (start, stop, step): (Int, Int, Int)
            switch n.count {
            case 1: (start, stop, step) = (0, n[0], 1)
            case 2: (start, stop, step) = (n[0], n[1], 1)
            case 3: (start, stop, step) = (n[0], n[1], n[2])
            default: throw fail("range expected 1 to 3 arguments, got \(n.count)")
            }
            guard step != 0 else { throw fail("range() arg 3 must not be zero") }
            let (span, overflow) = step > 0 ? stop.subtractingReportingOverflow(start) : start.subtractingReportingOverflow(stop)
            if overflow || span / (step == Int.min ? Int.max : abs(step)) > 100_000 {
                throw fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).")
            }
            let r = Array(stride(from: start, to: stop, by: step))
            return .list(r.map { .int($0) })
        }
        g["namespace"] = fn("namespace") { a, k in
            var d = JinjaDict()
            for x in a {
                guard case let .dict(src) = x else { throw fail("namespace() positional argument must be a dict") }
                for (key, value) in src.pairs { d[key] = value }
            }
            for (key, value) in k {
                if key.hasPrefix("_") { throw fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(key)'. Please rename the attribute.") }
                d[key] = value
            }
            return .namespace(JinjaNamespace(d))
        }
        g["dict"] = fn("dict") { a, k in
            var d = JinjaDict()
            for x in a {
                if case let .dict(src) = x { for (key, value) in src.pairs { d[key] = value } }
                else {
                    for pair in try iterate(x, line: 0) {
                        let kv = try iterate(pair, line: 0)
                        guard kv.count == 2 else { throw fail("dictionary update sequence element has length \(kv.count); 2 is required") }
                        d[kv[0]] = kv[1]
                    }
                }
            }
            for (key, value) in k { d[key] = value }
            return .dict(d)
        }
        g["joiner"] = fn("joiner") { a, _ in
            let sep = a.first?.str ?? ", "
            var used = false
            return fn("joiner") { _, _ in
                defer { used = true }
                return .string(used ? sep : "")
            }
        }
        g["raise_exception"] = fn("raise_exception") { a, _ in
            let message = (a.first?.str ?? "").replacingOccurrences(of: "\n", with: " ")
            throw fail(message)
        }
        g["strftime_now"] = fn("strftime_now") { a, _ in
            guard case let .string(format)? = a.first else { throw fail("strftime_now needs a format string") }
            var t = time_t(now().timeIntervalSince1970)
            var tmv = tm()
            localtime_r(&t, &tmv)
            var buf = [Int8](repeating: 0, count: 512)
            let n = strftime(&buf, buf.count, format, &tmv)
            return .string(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return g
    }
}
