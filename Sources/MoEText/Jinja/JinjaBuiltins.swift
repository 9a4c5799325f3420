import Foundation
import MoEFormats

/// What templates can call: jinja2's filters and tests, Python's operators, attribute and item
/// access as the immutable sandbox allows them, and the methods of str, dict and list.
package enum JinjaBuiltins {
    /// `a` repeated n times without an intermediate array of n copies (an empty `a` times a
    /// huge n is empty at once; the fuzzer found `[] * 999999999` allocating gigabytes).
    package static func repeated(_ a: [JinjaValue], _ n: Int) -> [JinjaValue] {
        guard n > 0, !a.isEmpty else { return [] }
        var out: [JinjaValue] = []
        out.reserveCapacity(n * a.count)
        for _ in 0..<n { out.append(contentsOf: a) }
        return out
    }

    package static let filters: Set<String> = [
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape",
        "first", "float", "forceescape", "format", "indent", "int", "items", "join", "last", "length", "list",
        "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select",
        "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    ]
    package static let knownUnsupportedFilters: Set<String> = [
        "filesizeformat", "groupby", "pprint", "random", "slice", "striptags", "truncate", "urlencode",
        "urlize", "wordwrap", "xmlattr",
    ]
    package static let tests: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter",
        "float", "ge", "greaterthan", "gt", "in", "integer", "iterable", "le", "lessthan", "lower", "lt",
        "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper",
    ]
    package static let knownUnsupportedTests: Set<String> = []

    package static func fail(_ m: String) -> JinjaError { JinjaError(line: 0, message: m) }

    package static let maxNesting = 100

    /// Refuses a container nested deeper than `maxNesting` (a loop that wraps a list in a list
    /// each turn would otherwise build values too deep to print, compare or even free).
    @discardableResult
    /// `v` after charging the text it holds to the render's budget (JinjaBudget), when a
    /// string; lists count 8 bytes an element.
    package static func charged(_ v: JinjaValue, _ what: String) throws -> JinjaValue {
        switch v {
        case let .string(s): try JinjaBudget.charge(s.utf8.count, what)
        case let .list(a), let .tuple(a): try JinjaBudget.charge(8 * a.count, what)
        default: break
        }
        return v
    }

    package static func checkNesting(_ v: JinjaValue) throws -> JinjaValue {
        if v.nesting(limit: maxNesting) > maxNesting { throw fail("values nested deeper than \(maxNesting) levels") }
        return v
    }

    /// The message an undefined value fails with, nil for other values.
    package static func undefinedMessage(_ v: JinjaValue) -> String? {
        guard case let .undefined(hint) = v else { return nil }
        return v.unsafeMessage ?? (hint.isEmpty ? "value is undefined" : hint)
    }

    /// jinja2's object_type_repr: "None", "dict object", …
    package static func objectType(_ v: JinjaValue) -> String {
        if case .none = v { return "None" }
        return "\(v.typeName) object"
    }

    package static func missing(_ obj: JinjaValue, _ name: JinjaValue) -> JinjaValue {
        if case let .string(s) = name {
            return .undefined(hint: "'\(objectType(obj))' has no attribute \(JinjaValue.pythonRepr(s))")
        }
        return .undefined(hint: "\(objectType(obj)) has no element \(name.repr)")
    }

    package static func unsafe(_ obj: JinjaValue, _ name: String) -> JinjaValue {
        .unsafe("access to attribute '\(name)' of '\(obj.typeName)' object is unsafe.")
    }

    // MARK: iteration, attributes, items

    package static func iterate(_ v: JinjaValue, line: Int) throws -> [JinjaValue] {
        switch v {
        case let .list(a), let .tuple(a): return a
        case let .dict(d): return d.keys
        case let .string(s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined:
            if let m = v.unsafeMessage { throw JinjaError(line: line, message: m) }
            return []
        default: throw JinjaError(line: line, message: "'\(v.typeName)' object is not iterable")
        }
    }

    package static func getAttribute(_ o: JinjaValue, _ name: String, line: Int) throws -> JinjaValue {
        if let m = undefinedMessage(o) { throw JinjaError(line: line, message: m) }
        if name.hasPrefix("__") { return unsafe(o, name) }
        if let method = try method(o, name) { return method }
        switch o {
        case let .dict(d): return d[name] ?? missing(o, .string(name))
        case let .namespace(ns): return ns.attributes[name] ?? missing(o, .string(name))
        default: return missing(o, .string(name))
        }
    }

    package static func getItem(_ o: JinjaValue, _ i: JinjaValue, line: Int) throws -> JinjaValue {
        if let m = undefinedMessage(o) { throw JinjaError(line: line, message: m) }
        switch o {
        case let .dict(d):
            if let v = d[i] { return v }
        case let .namespace(ns):
            if let v = ns.attributes[i] { return v }
        case let .list(a), let .tuple(a):
            if let k = intIndex(i) {
                let j = k < 0 ? k + a.count : k
                return j >= 0 && j < a.count ? a[j] : missing(o, i)
            }
        case let .string(s):
            if let k = intIndex(i) {
                let u = Array(s.unicodeScalars)
                let j = k < 0 ? k + u.count : k
                return j >= 0 && j < u.count ? .string(String(u[j])) : missing(o, i)
            }
        default: break
        }
        if case let .string(name) = i {
            if name.hasPrefix("__") { return unsafe(o, name) }
            if let method = try method(o, name) { return method }
        }
        return missing(o, i)
    }

    package static func intIndex(_ v: JinjaValue) -> Int? {
        switch v {
        case let .int(i): return i
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    package static func slice(_ o: JinjaValue, _ a: JinjaValue, _ b: JinjaValue, _ c: JinjaValue, line: Int) throws -> JinjaValue {
        if let m = undefinedMessage(o) { throw JinjaError(line: line, message: m) }
        func idx(_ v: JinjaValue) throws -> Int? {
            if case .none = v { return nil }
            guard let i = intIndex(v) else { throw JinjaError(line: line, message: "slice indices must be integers or None") }
            return i
        }
        let step = try idx(c) ?? 1
        guard step != 0 else { throw JinjaError(line: line, message: "slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            var start: Int, stop: Int
            if step > 0 {
                start = try idx(a).map { $0 < 0 ? max($0 + n, 0) : min($0, n) } ?? 0
                stop = try idx(b).map { $0 < 0 ? max($0 + n, 0) : min($0, n) } ?? n
                return start < stop ? Array(stride(from: start, to: stop, by: step)) : []
            } else {
                start = try idx(a).map { $0 < 0 ? max($0 + n, -1) : min($0, n - 1) } ?? n - 1
                stop = try idx(b).map { $0 < 0 ? max($0 + n, -1) : min($0, n - 1) } ?? -1
                return start > stop ? Array(stride(from: start, to: stop, by: step)) : []
            }
        }
        switch o {
        case let .list(x): return .list(try indices(x.count).map { x[$0] })
        case let .tuple(x): return .tuple(try indices(x.count).map { x[$0] })
        case let .string(s):
            let u = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in try indices(u.count) { out.append(u[i]) }
            return .string(String(out))
        default: throw JinjaError(line: line, message: "'\(o.typeName)' object is not subscriptable")
        }
    }

    // MARK: methods of str, dict, list

    package static func fn(_ name: String, _ f: @escaping ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue) -> JinjaValue {
        .function(JinjaFunction(name, f))
    }

    /// Reads positional-or-keyword arguments by name, Python style.
    package static func bind(_ fname: String, _ names: [String], _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> [JinjaValue?] {
        guard args.count <= names.count else { throw fail("\(fname)() takes at most \(names.count) arguments (\(args.count) given)") }
        var out: [JinjaValue?] = args.map { $0 } + Array(repeating: nil, count: names.count - args.count)
        for (k, v) in kwargs {
            guard let i = names.firstIndex(of: k) else { throw fail("\(fname)() got an unexpected keyword argument '\(k)'") }
            out[i] = v
        }
        return out
    }

    package static func strArg(_ v: JinjaValue?, _ what: String) throws -> String? {
        switch v {
        case nil, .none?: return nil
        case let .string(s)?: return s
        default: throw fail("\(what) must be str or None, not \(v!.typeName)")
        }
    }

    package static func method(_ o: JinjaValue, _ name: String) throws -> JinjaValue? {
        switch o {
        case let .string(s): return stringMethod(s, name)
        case let .dict(d):
            switch name {
            case "get":
                return fn("get") { a, k in
                    let b = try bind("get", ["key", "default"], a, k)
                    guard let key = b[0] else { throw fail("get expected at least 1 argument, got 0") }
                    return d[key] ?? b[1] ?? .none
                }
            case "items": return fn("items") { _, _ in .list(d.pairs.map { .tuple([$0.0, $0.1]) }) }
            case "keys": return fn("keys") { _, _ in .list(d.keys) }
            case "values": return fn("values") { _, _ in .list(d.valueList) }
            case "copy": return fn("copy") { _, _ in .dict(d) }
            case "pop", "popitem", "setdefault", "update", "clear": return unsafe(o, name)
            default: return nil
            }
        case let .list(a), let .tuple(a):
            let isList: Bool = { if case .list = o { return true } else { return false } }()
            switch name {
            case "index":
                return fn("index") { args, _ in
                    guard let x = args.first, let i = a.firstIndex(where: { $0.pyEquals(x) }) else { throw fail("value is not in list") }
                    return .int(i)
                }
            case "count":
                return fn("count") { args, _ in
                    guard let x = args.first else { throw fail("count() takes exactly one argument") }
                    return .int(a.filter { $0.pyEquals(x) }.count)
                }
            case "copy" where isList: return fn("copy") { _, _ in .list(a) }
            case "append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear":
                return isList ? unsafe(o, name) : nil
            default: return nil
            }
        default: return nil
        }
    }

    package static func pyStrip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
        let u = Array(s.unicodeScalars)
        let set = chars.map { Set($0.unicodeScalars) }
        func strip(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c) } ?? JinjaLexer.isSpace(c) }
        var a = 0, b = u.count
        if left { while a < b, strip(u[a]) { a += 1 } }
        if right { while b > a, strip(u[b - 1]) { b -= 1 } }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: u[a..<b])
        return String(out)
    }

    package static func pySplit(_ s: String, _ sep: String?, _ maxsplit: Int) throws -> [String] {
        let u = Array(s.unicodeScalars)
        var parts: [String] = []
        func str(_ r: ArraySlice<Unicode.Scalar>) -> String { var v = String.UnicodeScalarView(); v.append(contentsOf: r); return String(v) }
        guard let sep else {
            var i = 0
            while i < u.count {
                while i < u.count, JinjaLexer.isSpace(u[i]) { i += 1 }
                if i >= u.count { break }
                if maxsplit >= 0 && parts.count == maxsplit {
                    var end = u.count
                    while end > i, JinjaLexer.isSpace(u[end - 1]) { end -= 1 }
                    parts.append(str(u[i..<end])); return parts
                }
                let start = i
                while i < u.count, !JinjaLexer.isSpace(u[i]) { i += 1 }
                parts.append(str(u[start..<i]))
            }
            return parts
        }
        let p = Array(sep.unicodeScalars)
        guard !p.isEmpty else { throw fail("empty separator") }
        var start = 0, i = 0
        while i + p.count <= u.count {
            if (maxsplit < 0 || parts.count < maxsplit) && Array(u[i..<i + p.count]) == p {
                parts.append(str(u[start..<i])); i += p.count; start = i
            } else { i += 1 }
        }
        parts.append(str(u[start...]))
        return parts
    }

    package static func pyReplace(_ s: String, _ old: String, _ new: String, count: Int) -> String {
        if old.isEmpty {
            var out = ""
            var n = 0
            for u in s.unicodeScalars {
                if count < 0 || n < count { out += new; n += 1 }
                out.unicodeScalars.append(u)
            }
            if count < 0 || n < count { out += new }
            return out
        }
        let u = Array(s.unicodeScalars), p = Array(old.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0, n = 0
        while i < u.count {
            if (count < 0 || n < count), i + p.count <= u.count, Array(u[i..<i + p.count]) == p {
                out.append(contentsOf: new.unicodeScalars); i += p.count; n += 1
            } else { out.append(u[i]); i += 1 }
        }
        return String(out)
    }

    package static func pyTitle(_ s: String) -> String {
        var out = ""
        var prevCased = false
        for u in s.unicodeScalars {
            let c = String(u)
            if u.properties.isCased {
                out += prevCased ? c.lowercased() : c.uppercased()
                prevCased = true
            } else {
                out += c
                prevCased = false
            }
        }
        return out
    }

    package static func pyCapitalize(_ s: String) -> String {
        guard let first = s.unicodeScalars.first else { return s }
        var rest = String.UnicodeScalarView()
        rest.append(contentsOf: s.unicodeScalars.dropFirst())
        return String(first).uppercased() + String(rest).lowercased()
    }

    package static func splitLines(_ s: String, keepEnds: Bool = false) -> [String] {
        var lines: [String] = []
        var cur = String.UnicodeScalarView()
        let u = Array(s.unicodeScalars)
        var i = 0
        while i < u.count {
            let c = u[i]
            switch c.value {
            case 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x85, 0x2028, 0x2029:
                if keepEnds { cur.append(c) }
                if c == "\r", i + 1 < u.count, u[i + 1] == "\n" { if keepEnds { cur.append("\n") }; i += 1 }
                lines.append(String(cur)); cur = String.UnicodeScalarView()
            default: cur.append(c)
            }
            i += 1
        }
        if !cur.isEmpty { lines.append(String(cur)) }
        return lines
    }

    package static func stringMethod(_ s: String, _ name: String) -> JinjaValue? {
        func affix(_ n: String, _ test: @escaping (String, String) -> Bool) -> JinjaValue {
            fn(n) { a, _ in
                guard let p = a.first else { throw fail("\(n)() takes at least 1 argument") }
                switch p {
                case let .string(x): return .bool(test(s, x))
                case let .tuple(xs), let .list(xs):
                    return .bool(xs.contains { if case let .string(x) = $0 { return test(s, x) } else { return false } })
                default: throw fail("\(n) first arg must be str or a tuple of str, not \(p.typeName)")
                }
            }
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            return fn(name) { a, _ in
                .string(pyStrip(s, try strArg(a.first, "\(name) arg"), left: name != "rstrip", right: name != "lstrip"))
            }
        case "split", "rsplit":
            return fn(name) { a, k in
                let b = try bind(name, ["sep", "maxsplit"], a, k)
                let maxsplit = b[1].flatMap(intIndex) ?? -1
                if name == "rsplit" && maxsplit >= 0 {
                    let rev = try pySplit(String(s.unicodeScalars.reversed().map(Character.init)),
                                          try strArg(b[0], "sep").map { String($0.unicodeScalars.reversed().map(Character.init)) }, maxsplit)
                    return .list(rev.reversed().map { .string(String($0.unicodeScalars.reversed().map(Character.init))) })
                }
                return .list(try pySplit(s, try strArg(b[0], "sep"), maxsplit).map { .string($0) })
            }
        case "splitlines":
            return fn(name) { a, k in
                let b = try bind(name, ["keepends"], a, k)
                return .list(splitLines(s, keepEnds: b[0]?.truthy ?? false).map { .string($0) })
            }
        case "startswith": return affix(name) { $0.unicodeScalars.starts(with: $1.unicodeScalars) }
        case "endswith": return affix(name) { $0.unicodeScalars.reversed().starts(with: $1.unicodeScalars.reversed()) }
        case "upper": return fn(name) { _, _ in .string(s.uppercased()) }
        case "lower": return fn(name) { _, _ in .string(s.lowercased()) }
        case "title": return fn(name) { _, _ in .string(pyTitle(s)) }
        case "capitalize": return fn(name) { _, _ in .string(pyCapitalize(s)) }
        case "replace":
            return fn(name) { a, k in
                let b = try bind(name, ["old", "new", "count"], a, k)
                guard case let .string(old)? = b[0], case let .string(new)? = b[1] else { throw fail("replace() arguments must be str") }
                return .string(try replace(s, old, new, count: b[2].flatMap(intIndex) ?? -1))
            }
        case "find", "rfind", "index", "rindex", "count":
            return fn(name) { a, _ in
                guard case let .string(x)? = a.first else { throw fail("\(name)() argument must be str") }
                // Linear (KMP); the scan that compared a copied slice at every offset was quadratic.
                let n = s.unicodeScalars.count
                let hits = scalarOccurrences(of: x, in: s)
                if x.isEmpty && name == "count" { return .int(n + 1) }
                if name == "count" { return .int(hits.count) }
                let hit = name.hasPrefix("r") ? (x.isEmpty ? n : hits.last) : (x.isEmpty ? 0 : hits.first)
                if let hit { return .int(hit) }
                if name.hasSuffix("index") { throw fail("substring not found") }
                return .int(-1)
            }
        case "join":
            return fn(name) { a, _ in
                guard let x = a.first else { throw fail("join() takes exactly one argument") }
                let parts = try iterate(x, line: 0).map { v -> String in
                    guard case let .string(t) = v else { throw fail("sequence item: expected str instance, \(v.typeName) found") }
                    return t
                }
                try JinjaBudget.check(parts.reduce(0) { $0 + $1.utf8.count } + max(parts.count - 1, 0) * s.utf8.count, "join")
                return .string(parts.joined(separator: s))
            }
        case "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower":
            return fn(name) { _, _ in
                let u = s.unicodeScalars
                switch name {
                case "isdigit": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.numericType != nil })
                case "isalpha": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.isAlphabetic })
                case "isalnum": return .bool(!u.isEmpty && u.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
                case "isspace": return .bool(!u.isEmpty && u.allSatisfy(JinjaLexer.isSpace))
                case "isupper": return .bool(u.contains { $0.properties.isCased } && s == s.uppercased())
                default: return .bool(u.contains { $0.properties.isCased } && s == s.lowercased())
                }
            }
        case "removeprefix", "removesuffix":
            return fn(name) { a, _ in
                guard case let .string(x)? = a.first else { throw fail("\(name)() argument must be str") }
                let su = Array(s.unicodeScalars), xu = Array(x.unicodeScalars)
                var out = String.UnicodeScalarView()
                if name == "removeprefix", su.starts(with: xu) { out.append(contentsOf: su[xu.count...]) }
                else if name == "removesuffix", !xu.isEmpty, su.count >= xu.count, Array(su[(su.count - xu.count)...]) == xu { out.append(contentsOf: su[..<(su.count - xu.count)]) }
                else { return .string(s) }
                return .string(String(out))
            }
        case "format":
            return fn(name) { a, k in .string(try pyFormat(s, a, k)) }
        default: return nil
        }
    }

    /// `str.format` for `{}`, `{0}` and `{name}` fields (no format specs).
    package static func pyFormat(_ s: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> String {
        var out = ""
        let u = Array(s.unicodeScalars)
        var i = 0, auto = 0
        while i < u.count {
            let c = u[i]
            if c == "{" {
                if i + 1 < u.count, u[i + 1] == "{" { out += "{"; i += 2; continue }
                guard let close = u[i...].firstIndex(of: "}") else { throw fail("Single '{' encountered in format string") }
                let field = String(String.UnicodeScalarView(u[(i + 1)..<close]))
                if field.contains(":") || field.contains("!") { throw fail("format specs in str.format are not supported") }
                let v: JinjaValue
                if field.isEmpty {
                    guard auto < args.count else { throw fail("Replacement index \(auto) out of range for positional args tuple") }
                    v = args[auto]; auto += 1
                } else if let n = Int(field) {
                    guard n < args.count else { throw fail("Replacement index \(n) out of range for positional args tuple") }
                    v = args[n]
                } else {
                    guard let kv = kwargs.first(where: { $0.0 == field }) else { throw fail("KeyError: \(JinjaValue.pythonRepr(field))") }
                    v = kv.1
                }
                out += try text(v, "str.format")
                try JinjaBudget.check(out.utf8.count, "str.format")
                i = close + 1
            } else if c == "}" {
                if i + 1 < u.count, u[i + 1] == "}" { out += "}"; i += 2; continue }
                throw fail("Single '}' encountered in format string")
            } else { out.unicodeScalars.append(c); i += 1 }
        }
        return out
    }

    /// `"%s" % x` for %s, %r, %d, %i, %f (with a precision: `%.2f`) and %%.
    package static func percentFormat(_ s: String, _ arg: JinjaValue) throws -> String {
        var args: [JinjaValue]
        if case let .tuple(a) = arg { args = a } else { args = [arg] }
        // Python takes a list or dict right of % as a mapping: no error for arguments left over.
        let mappingLike: Bool = { switch arg { case .list, .dict: return true; default: return false } }()
        var out = ""
        let u = Array(s.unicodeScalars)
        var i = 0
        while i < u.count {
            guard u[i] == "%" else { out.unicodeScalars.append(u[i]); i += 1; continue }
            guard i + 1 < u.count else { throw fail("incomplete format") }
            var precision: Int?
            if u[i + 1] == ".", i + 2 < u.count {
                var k = i + 2, p = 0
                while k < u.count, let d = Int(String(u[k])) { p = min(p * 10 + d, 1_000_000); k += 1 }   // capped: no overflow
                precision = p
                i = k - 1
                guard i + 1 < u.count else { throw fail("incomplete format") }
            }
            let f = u[i + 1]
            i += 2
            if f == "%" { out += "%"; continue }
            guard !args.isEmpty else { throw fail("not enough arguments for format string") }
            let v = args.removeFirst()
            switch f {
            case "s": out += try text(v, "% formatting"); try JinjaBudget.check(out.utf8.count, "% formatting")
            case "r":
                try JinjaBudget.check(v.textSize(upTo: JinjaEvaluator.maxOutputBytes + 1), "% formatting")
                out += v.repr; try JinjaBudget.check(out.utf8.count, "% formatting")
            case "f", "F":
                guard let x = v.numeric else { throw fail("must be real number, not \(v.typeName)") }
                guard (precision ?? 6) <= 100 else { throw fail("format precision too large") }
                out += String(format: "%.\(precision ?? 6)f", x)
            case "d", "i":
                if case let .float(d) = v {
                    guard d.isFinite, abs(d) < 9.2e18 else { throw fail("%d format: number out of range") }
                    out += String(Int(d))
                }
                else if let n = intIndex(v) { out += String(n) }
                else { throw fail("%d format: a real number is required, not \(v.typeName)") }
            default: throw fail("unsupported format character '\(f)'")
            }
        }
        if !args.isEmpty && !mappingLike { throw fail("not all arguments converted during string formatting") }
        return out
    }

    // MARK: operators

    package static func binary(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> JinjaValue {
        if op == "~" {
            let a = try text(l, "~"), b = try text(r, "~")
            try JinjaBudget.check(a.utf8.count + b.utf8.count, "~")
            return .string(a + b)
        }
        if let m = undefinedMessage(l) ?? undefinedMessage(r) { throw fail(m) }
        func unsupported() -> JinjaError {
            switch (op, l, r) {
            case ("*", .string, _), ("*", .list, _), ("*", .tuple, _):
                return fail("can't multiply sequence by non-int of type '\(r.typeName)'")
            case ("*", _, .string), ("*", _, .list), ("*", _, .tuple):
                return fail("can't multiply sequence by non-int of type '\(l.typeName)'")
            default:
                return fail("unsupported operand type(s) for \(op == "**" ? "** or pow()" : op): '\(l.typeName)' and '\(r.typeName)'")
            }
        }
        func checkSize(_ n: Int, times unit: Int = 1) throws {
            let (total, overflow) = max(n, 0).multipliedReportingOverflow(by: unit)
            if overflow || total > JinjaEvaluator.maxOutputBytes { throw fail("result of \(op) is too large") }
        }
        switch (op, l, r) {
        case (_, .string, _) where op == "+" && r.typeName != "str",
             (_, .list, _) where op == "+" && r.typeName != "list",
             (_, .tuple, _) where op == "+" && r.typeName != "tuple":
            throw fail("can only concatenate \(l.typeName) (not \"\(r.typeName)\") to \(l.typeName)")
        case let ("+", .string(a), .string(b)):
            try checkSize(a.utf8.count + b.utf8.count); return .string(a + b)
        case let ("+", .list(a), .list(b)): return .list(a + b)
        case let ("+", .tuple(a), .tuple(b)): return .tuple(a + b)
        case let ("*", .string(a), _), let ("*", _, .string(a)):
            let isLeft: Bool = { if case .string = l { return true } else { return false } }()
            guard let n = intIndex(isLeft ? r : l) else { throw unsupported() }
            try checkSize(n, times: a.utf8.count)
            return .string(n > 0 && !a.isEmpty ? String(repeating: a, count: n) : "")
        case let ("*", .list(a), _), let ("*", _, .list(a)):
            let isLeft: Bool = { if case .list = l { return true } else { return false } }()
            guard let n = intIndex(isLeft ? r : l) else { throw unsupported() }
            try checkSize(n, times: a.count)
            return .list(repeated(a, n))
        case let ("*", .tuple(a), _), let ("*", _, .tuple(a)):
            let isLeft: Bool = { if case .tuple = l { return true } else { return false } }()
            guard let n = intIndex(isLeft ? r : l) else { throw unsupported() }
            try checkSize(n, times: a.count)
            return .tuple(repeated(a, n))
        case let ("%", .string(a), _):
            return .string(try percentFormat(a, r))
        default: break
        }
        if let a = intIndex(l), let b = intIndex(r) {
            switch op {
            case "+": let (v, o) = a.addingReportingOverflow(b); if o { throw fail("integer overflow") }; return .int(v)
            case "-": let (v, o) = a.subtractingReportingOverflow(b); if o { throw fail("integer overflow") }; return .int(v)
            case "*": let (v, o) = a.multipliedReportingOverflow(by: b); if o { throw fail("integer overflow") }; return .int(v)
            case "/":
                guard b != 0 else { throw fail("division by zero") }
                return .float(Double(a) / Double(b))
            case "//":
                guard b != 0 else { throw fail("integer division or modulo by zero") }
                if a == Int.min && b == -1 { throw fail("integer overflow") }
                var q = a / b
                if (a % b != 0) && ((a < 0) != (b < 0)) { q -= 1 }
                return .int(q)
            case "%":
                guard b != 0 else { throw fail("integer modulo by zero") }
                if b == -1 { return .int(0) }
                let m = a % b
                return .int(m != 0 && ((m < 0) != (b < 0)) ? m + b : m)
            case "**":
                if b < 0 { return .float(pow(Double(a), Double(b))) }
                var result = 1, base = a, e = b
                while e > 0 {
                    if e & 1 == 1 { let (v, o) = result.multipliedReportingOverflow(by: base); if o { throw fail("integer overflow") }; result = v }
                    e >>= 1
                    if e > 0 { let (v, o) = base.multipliedReportingOverflow(by: base); if o { throw fail("integer overflow") }; base = v }
                }
                return .int(result)
            default: throw unsupported()
            }
        }
        guard let a = l.numeric, let b = r.numeric else { throw unsupported() }
        switch op {
        case "+": return .float(a + b)
        case "-": return .float(a - b)
        case "*": return .float(a * b)
        case "/":
            guard b != 0 else { throw fail("float division by zero") }
            return .float(a / b)
        case "//":
            guard b != 0 else { throw fail("float floor division by zero") }
            return .float((a / b).rounded(.down))
        case "%":
            guard b != 0 else { throw fail("float modulo") }
            let m = a.truncatingRemainder(dividingBy: b)
            return .float(m != 0 && ((m < 0) != (b < 0)) ? m + b : m)
        case "**": return .float(pow(a, b))
        default: throw unsupported()
        }
    }

    package static func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
        switch container {
        case let .string(s):
            guard case let .string(x) = item else { throw fail("'in <string>' requires string as left operand, not \(item.typeName)") }
            if x.isEmpty { return true }
            let u = Array(s.unicodeScalars), p = Array(x.unicodeScalars)
            guard p.count <= u.count else { return false }
            for i in 0...(u.count - p.count) where u[i] == p[0] && Array(u[i..<i + p.count]) == p { return true }
            return false
        case let .list(a), let .tuple(a): return a.contains { $0.pyEquals(item) }
        case let .dict(d):
            guard JinjaKey(item) != nil else { throw fail("unhashable type: '\(item.typeName)'") }
            return d[item] != nil
        case .undefined:
            if let m = container.unsafeMessage { throw fail(m) }
            return false
        case let .namespace(ns): return ns.attributes[item] != nil
        default: throw fail("argument of type '\(container.typeName)' is not iterable")
        }
    }

    package static func compare(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> Bool {
        switch op {
        case "==": return l.pyEquals(r)
        case "!=": return !l.pyEquals(r)
        case "in": return try contains(r, l)
        case "notin": return !(try contains(r, l))
        default:
            if let m = undefinedMessage(l) ?? undefinedMessage(r) { throw fail(m) }
            return try ordered(op, l, r)
        }
    }

    /// `<`, `<=`, `>`, `>=` as Python orders: sequences by their first differing items, and the
    /// error names the two values that cannot be ordered.
    package static func ordered(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
        switch (a, b) {
        case let (.list(x), .list(y)), let (.tuple(x), .tuple(y)):
            for (p, q) in zip(x, y) where !p.pyEquals(q) { return try ordered(op, p, q) }
            switch op {
            case "<": return x.count < y.count
            case "<=": return x.count <= y.count
            case ">": return x.count > y.count
            default: return x.count >= y.count
            }
        default:
            if let m = undefinedMessage(a) ?? undefinedMessage(b) { throw fail(m) }
            guard let lt = a.pyLess(b), let gt = b.pyLess(a) else {
                throw fail("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "<": return lt
            case ">": return gt
            case "<=": return lt || a.pyEquals(b)
            default: return gt || a.pyEquals(b)
            }
        }
    }
}
