import Foundation
import MoEFormats

/// A value inside a Jinja template, with Python's semantics as jinja2 gives them: truthiness,
/// `str()` and `repr()`, equality and ordering. Lists and dicts are values (the sandbox that
/// transformers uses forbids mutating them); a namespace is the one mutable object.
public indirect enum JinjaValue {
    /// jinja2's default Undefined: renders empty, is falsy, fails on attribute access.
    /// `hint` is the message an error about it gives.
    case undefined(hint: String)
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case function(JinjaFunction)

    public static func undefinedName(_ name: String) -> JinjaValue { .undefined(hint: "'\(name)' is undefined") }

    /// What the sandbox gives for a forbidden attribute (`list.append`): an undefined that fails
    /// as soon as it is printed, called or iterated.
    package static func unsafe(_ message: String) -> JinjaValue { .undefined(hint: "\u{0}" + message) }

    /// The message of a value the sandbox refused, nil for any other.
    package var unsafeMessage: String? {
        if case let .undefined(hint) = self, hint.hasPrefix("\u{0}") { return String(hint.dropFirst()) }
        return nil
    }

    package var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python truthiness.
    package var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case let .bool(b): return b
        case let .int(i): return i != 0
        case let .float(d): return d != 0
        case let .string(s): return !s.isEmpty
        case let .list(a), let .tuple(a): return !a.isEmpty
        case let .dict(d): return !d.keys.isEmpty
        case .namespace, .function: return true
        }
    }

    /// The Python type name, as error messages say it.
    package var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }

    /// Python's `str()` (what `{{ x }}` prints).
    package var str: String {
        switch self {
        case .undefined: return ""
        case let .string(s): return s
        default: return repr
        }
    }

    /// Python's `repr()`.
    package var repr: String { repr(depth: 0) }

    /// How deeply lists, tuples, dicts and namespaces nest in this value, counted up to
    /// `limit + 1` (so the count itself never recurses deeper than that).
    package func nesting(limit: Int) -> Int {
        guard limit >= 0 else { return 1 }
        switch self {
        case let .list(a), let .tuple(a): return 1 + (a.lazy.map { $0.nesting(limit: limit - 1) }.max() ?? 0)
        case let .dict(d): return 1 + (d.valueList.lazy.map { $0.nesting(limit: limit - 1) }.max() ?? 0)
        case let .namespace(n): return 1 + (n.attributes.valueList.lazy.map { $0.nesting(limit: limit - 1) }.max() ?? 0)
        default: return 0
        }
    }

    /// repr, with "..." past 100 levels (a namespace can hold itself).
    private func repr(depth: Int) -> String {
        if depth > 100 { return "..." }
        switch self {
        case .undefined: return "Undefined"
        case .none: return "None"
        case let .bool(b): return b ? "True" : "False"
        case let .int(i): return String(i)
        case let .float(d): return JinjaValue.pythonFloat(d)
        case let .string(s): return JinjaValue.pythonRepr(s)
        case let .list(a): return "[" + a.map { $0.repr(depth: depth + 1) }.joined(separator: ", ") + "]"
        case let .tuple(a):
            return a.count == 1 ? "(" + a[0].repr(depth: depth + 1) + ",)" : "(" + a.map { $0.repr(depth: depth + 1) }.joined(separator: ", ") + ")"
        case let .dict(d):
            return "{" + d.pairs.map { $0.0.repr(depth: depth + 1) + ": " + $0.1.repr(depth: depth + 1) }.joined(separator: ", ") + "}"
        case let .namespace(n): return "<Namespace " + JinjaValue.dict(n.attributes).repr(depth: depth + 1) + ">"
        case let .function(f): return "<function \(f.name)>"
        }
    }

    /// Python's float repr: the shortest digits that read back, `1.0` not `1`, exponent from 1e16.
    package static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        var s = "\(d)"
        // Swift writes "1e-05" and "1e+16" as Python does; only make sure a plain integer gets ".0".
        if !s.contains(".") && !s.contains("e") && !s.contains("n") && !s.contains("i") { s += ".0" }
        return s
    }

    /// Python's repr of a str: single quotes unless the text has ' and no ".
    package static func pythonRepr(_ s: String) -> String {
        let quote: Character = (s.contains("'") && !s.contains("\"")) ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote { out += "\\" + String(quote); continue }
                if u.value < 0x20 || u.value == 0x7f {
                    out += String(format: "\\x%02x", u.value)
                } else if u.value >= 0x80 && !JinjaValue.isPrintable(u) {
                    if u.value <= 0xff { out += String(format: "\\x%02x", u.value) }
                    else if u.value <= 0xffff { out += String(format: "\\u%04x", u.value) }
                    else { out += String(format: "\\U%08x", u.value) }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append(quote)
        return out
    }

    /// Close to Python's str.isprintable for non-ASCII: not a control, format, separator
    /// (other than the space), surrogate, private-use or unassigned code point.
    package static func isPrintable(_ u: Unicode.Scalar) -> Bool {
        switch u.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
            return u == " "
        default: return true
        }
    }
}

/// A Python dict: insertion-ordered, keyed by hashable values.
public struct JinjaDict {
    public private(set) var keys: [JinjaValue] = []
    private var values: [JinjaValue] = []
    private var index: [JinjaKey: Int] = [:]

    public init() {}
    public init(_ pairs: [(String, JinjaValue)]) {
        for (k, v) in pairs { self[.string(k)] = v }
    }

    public var pairs: [(JinjaValue, JinjaValue)] { Array(zip(keys, values)) }
    package var valueList: [JinjaValue] { values }
    package var count: Int { keys.count }

    public subscript(key: JinjaValue) -> JinjaValue? {
        get {
            guard let k = JinjaKey(key), let i = index[k] else { return nil }
            return values[i]
        }
        set {
            guard let k = JinjaKey(key) else { return }
            if let i = index[k] {
                if let v = newValue { values[i] = v } else {
                    keys.remove(at: i); values.remove(at: i)
                    index = [:]
                    for (j, key) in keys.enumerated() { if let hk = JinjaKey(key) { index[hk] = j } }
                }
            } else if let v = newValue {
                index[k] = keys.count
                keys.append(key); values.append(v)
            }
        }
    }
    public subscript(name: String) -> JinjaValue? {
        get { self[.string(name)] }
        set { self[.string(name)] = newValue }
    }
}

/// The hashable values a dict key may be (True hashes as 1, as in Python).
package enum JinjaKey: Hashable {
    case string(String), int(Int), float(Double), none, tuple([JinjaKey])
    package init?(_ v: JinjaValue) {
        switch v {
        case let .string(s): self = .string(s)
        case let .int(i): self = .int(i)
        case let .bool(b): self = .int(b ? 1 : 0)
        case let .float(d): if d == d.rounded(), abs(d) < 9e18 { self = .int(Int(d)) } else { self = .float(d) }
        case .none: self = .none
        case let .tuple(a):
            var ks: [JinjaKey] = []
            for x in a { guard let k = JinjaKey(x) else { return nil }; ks.append(k) }
            self = .tuple(ks)
        default: return nil
        }
    }
}

/// `namespace(...)`: the one object whose attributes a template may assign.
public final class JinjaNamespace {
    package var attributes: JinjaDict
    package init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A callable: a global (`range`, `raise_exception`), a bound method (`s.strip`) or a macro.
public final class JinjaFunction {
    package let name: String
    package let call: ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue
    package init(_ name: String, _ call: @escaping ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue) {
        self.name = name
        self.call = call
    }
}

extension JinjaValue {
    /// Python `==`.
    package func pyEquals(_ other: JinjaValue) -> Bool {
        switch (self, other) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.string(a), .string(b)): return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case let (.list(a), .list(b)), let (.tuple(a), .tuple(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.pyEquals($1) }
        case let (.dict(a), .dict(b)):
            guard a.count == b.count else { return false }
            for (k, v) in a.pairs { guard let w = b[k], v.pyEquals(w) else { return false } }
            return true
        case let (.namespace(a), .namespace(b)): return a === b
        case let (.function(a), .function(b)): return a === b
        default:
            if let x = numeric, let y = other.numeric { return x == y }
            return false
        }
    }

    /// The value as a number, for int/float/bool.
    package var numeric: Double? {
        switch self {
        case let .int(i): return Double(i)
        case let .float(d): return d
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python ordering (`<`), or nil where Python raises TypeError.
    package func pyLess(_ other: JinjaValue) -> Bool? {
        switch (self, other) {
        case let (.string(a), .string(b)): return a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars)
        case let (.list(a), .list(b)), let (.tuple(a), .tuple(b)):
            for (x, y) in zip(a, b) where !x.pyEquals(y) { return x.pyLess(y) }
            return a.count < b.count
        default:
            if case let .int(x) = self, case let .int(y) = other { return x < y }
            if let x = numeric, let y = other.numeric { return x < y }
            return nil
        }
    }
}
