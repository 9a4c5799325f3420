import Foundation
import MoEFormats

/// Variables of one scope. jinja2 gives a for-loop body, a macro call and a `with` block their
/// own scope; `if` blocks share their parent's. Assignments go to the innermost scope.
package final class JinjaScope {
    package var variables: [String: JinjaValue] = [:]
    package let parent: JinjaScope?
    /// The names this frame's statements use (see JinjaFrame).
    package var refs: Set<String> = []
    package init(parent: JinjaScope?) { self.parent = parent }

    /// A scope for `frame` inside `parent`: names the frame assigns before reading start
    /// undefined unless an enclosing frame uses them, as jinja2 compiles it.
    package init(_ frame: JinjaFrame, parent: JinjaScope?) {
        self.parent = parent
        refs = frame.refs
        for name in frame.assignedFirst where !(parent?.refersTo(name) ?? false) {
            variables[name] = .undefinedName(name)
        }
    }

    package func refersTo(_ name: String) -> Bool {
        var s: JinjaScope? = self
        while let scope = s {
            if scope.refs.contains(name) { return true }
            s = scope.parent
        }
        return false
    }

    package func lookup(_ name: String) -> JinjaValue? {
        var s: JinjaScope? = self
        while let scope = s {
            if let v = scope.variables[name] { return v }
            s = scope.parent
        }
        return nil
    }
}

/// Runs a parsed template: writes the text, tracks `{% generation %}` spans (UTF-8 byte
/// offsets of the output) and guards against templates that would never end.
package final class JinjaEvaluator {
    package enum Flow { case normal, breakLoop, continueLoop }

    package static let maxOutputBytes = 16 << 20
    package static let maxIterations = 100_000
    package static let maxCallDepth = 100

    private(set) var output = ""
    private(set) var generationSpans: [Range<Int>] = []
    private var iterations = 0
    private var callDepth = 0
    private var loopDepth = 0
    private let globals: [String: JinjaValue]

    package init(globals: [String: JinjaValue]) {
        self.globals = globals
    }

    package func write(_ s: String) throws {
        output += s
        if output.utf8.count > JinjaEvaluator.maxOutputBytes {
            throw JinjaError(line: 0, message: "the rendered text exceeds \(JinjaEvaluator.maxOutputBytes >> 20) MiB")
        }
    }

    package func run(_ nodes: [JinjaNode], scope: JinjaScope) throws -> Flow {
        for node in nodes {
            let flow = try execute(node, scope)
            if flow != .normal { return flow }
        }
        return .normal
    }

    private func execute(_ node: JinjaNode, _ scope: JinjaScope) throws -> Flow {
        switch node {
        case let .text(s):
            try write(s)
        case let .output(e, line):
            let v = try eval(e, scope)
            if let m = v.unsafeMessage { throw JinjaError(line: line, message: m) }
            do { try write(try JinjaBuiltins.text(v, "printing a value")) } catch let err as JinjaError where err.line == 0 {
                throw JinjaError(line: line, message: err.message)
            }
        case let .conditional(branches, otherwise):
            for (cond, body) in branches where try eval(cond, scope).truthy {
                return try run(body, scope: scope)
            }
            return try run(otherwise, scope: scope)
        case let .loop(target, iterable, condition, body, otherwise, line, bodyFrame, elseFrame):
            return try executeLoop(target: target, iterable: iterable, condition: condition, body: body,
                                   otherwise: otherwise, line: line, scope: scope, bodyFrame: bodyFrame, elseFrame: elseFrame)
        case let .set(target, e, line):
            try assign(target, try eval(e, scope), scope, line: line)
        case let .setBlock(target, filter, body, line, frame):
            let text = try capture { _ = try run(body, scope: JinjaScope(frame, parent: scope)) }
            var value = JinjaValue.string(text)
            if let filter { value = try eval(filter, scope, blockInput: value) }
            try assign(target, value, scope, line: line)
        case let .macro(name, parameters, body, line, frame):
            scope.variables[name] = .function(makeMacro(name: name, parameters: parameters, body: body, frame: frame, scope: scope, line: line))
        case let .callBlock(call, parameters, body, line, frame):
            guard case let .call(callee, args, kwargs, callLine) = call else { return .normal }
            let caller = makeMacro(name: "caller", parameters: parameters, body: body, frame: frame, scope: scope, line: line)
            let f = try eval(callee, scope)
            let v = try callValue(f, try args.map { try eval($0, scope) },
                                  try kwargs.map { ($0.0, try eval($0.1, scope)) } + [("caller", .function(caller))], line: callLine)
            try write(v.str)
        case let .filterBlock(filter, body, _):
            let text = try capture { _ = try run(body, scope: scope) }
            try write(try eval(filter, scope, blockInput: .string(text)).str)
        case let .with(assignments, body, frame):
            let inner = JinjaScope(frame, parent: scope)
            for (t, e) in assignments { try assign(t, try eval(e, scope), inner, line: 0) }
            return try run(body, scope: inner)
        case let .generation(body, frame):
            let start = output.utf8.count
            let flow = try run(body, scope: JinjaScope(frame, parent: scope))
            generationSpans.append(start..<output.utf8.count)
            return flow
        case let .breakLoop(line):
            if loopDepth == 0 { throw JinjaError(line: line, message: "'break' outside a for loop") }
            return .breakLoop
        case let .continueLoop(line):
            if loopDepth == 0 { throw JinjaError(line: line, message: "'continue' outside a for loop") }
            return .continueLoop
        }
        return .normal
    }

    /// Renders into a fresh buffer and returns what was written.
    private func capture(_ body: () throws -> Void) throws -> String {
        let saved = output
        let savedSpans = generationSpans
        output = ""
        defer { generationSpans = savedSpans }
        do {
            try body()
        } catch {
            output = saved
            throw error
        }
        let text = output
        output = saved
        return text
    }

    private func executeLoop(target: JinjaTarget, iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode],
                             otherwise: [JinjaNode], line: Int, scope: JinjaScope,
                             bodyFrame: JinjaFrame, elseFrame: JinjaFrame) throws -> Flow {
        let seq = try eval(iterable, scope)
        var items = try JinjaBuiltins.iterate(seq, line: line)
        if let condition {
            items = try items.filter { item in
                let s = JinjaScope(bodyFrame, parent: scope)
                try assign(target, item, s, line: line)
                return try eval(condition, s).truthy
            }
        }
        if items.isEmpty { return try run(otherwise, scope: JinjaScope(elseFrame, parent: scope)) }
        loopDepth += 1
        defer { loopDepth -= 1 }
        let n = items.count
        for (i, item) in items.enumerated() {
            iterations += 1
            if iterations > JinjaEvaluator.maxIterations {
                throw JinjaError(line: line, message: "more than \(JinjaEvaluator.maxIterations) loop iterations")
            }
            let s = JinjaScope(bodyFrame, parent: scope)
            var loop = JinjaDict()
            loop["index"] = .int(i + 1)
            loop["index0"] = .int(i)
            loop["revindex"] = .int(n - i)
            loop["revindex0"] = .int(n - i - 1)
            loop["first"] = .bool(i == 0)
            loop["last"] = .bool(i == n - 1)
            loop["length"] = .int(n)
            loop["depth"] = .int(1)
            loop["depth0"] = .int(0)
            if i > 0 { loop["previtem"] = items[i - 1] }
            if i + 1 < n { loop["nextitem"] = items[i + 1] }
            loop["cycle"] = .function(JinjaFunction("cycle") { args, _ in
                guard !args.isEmpty else { throw JinjaError(line: line, message: "no items for cycling given") }
                return args[i % args.count]
            })
            s.variables["loop"] = .dict(loop)
            try assign(target, item, s, line: line)
            let flow = try run(body, scope: s)
            if flow == .breakLoop { break }
        }
        return .normal
    }

    private func assign(_ target: JinjaTarget, _ value: JinjaValue, _ scope: JinjaScope, line: Int) throws {
        switch target {
        case let .name(n):
            scope.variables[n] = value
        case let .tuple(targets):
            let items = try JinjaBuiltins.iterate(value, line: line)
            guard items.count == targets.count else {
                throw JinjaError(line: line, message: items.count > targets.count
                    ? "too many values to unpack (expected \(targets.count))"
                    : "not enough values to unpack (expected \(targets.count), got \(items.count))")
            }
            for (t, v) in zip(targets, items) { try assign(t, v, scope, line: line) }
        case let .attribute(obj, attr):
            guard case let .namespace(ns)? = scope.lookup(obj) ?? globals[obj] else {
                throw JinjaError(line: line, message: "cannot assign attribute on non-namespace object")
            }
            if attr.hasPrefix("_") {
                throw JinjaError(line: line, message: "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(attr)'. Please rename the attribute.")
            }
            ns.attributes[attr] = value
            do { _ = try JinjaBuiltins.checkNesting(.namespace(ns)) } catch let e as JinjaError {
                ns.attributes[attr] = nil
                throw JinjaError(line: line, message: e.message)
            }
        }
    }

    private func makeMacro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode], frame: JinjaFrame,
                           scope: JinjaScope, line: Int) -> JinjaFunction {
        JinjaFunction(name) { [unowned self] args, kwargs in
            self.callDepth += 1
            defer { self.callDepth -= 1 }
            if self.callDepth > JinjaEvaluator.maxCallDepth {
                throw JinjaError(line: line, message: "macro calls nested deeper than \(JinjaEvaluator.maxCallDepth)")
            }
            let s = JinjaScope(frame, parent: scope)
            var kw = kwargs
            for (i, (p, def)) in parameters.enumerated() {
                if i < args.count {
                    s.variables[p] = args[i]
                } else if let k = kw.firstIndex(where: { $0.0 == p }) {
                    s.variables[p] = kw[k].1
                    kw.remove(at: k)
                } else if let def {
                    s.variables[p] = try self.eval(def, s)
                } else {
                    s.variables[p] = .undefined(hint: "parameter '\(p)' was not provided")
                }
            }
            if let k = kw.firstIndex(where: { $0.0 == "caller" }) {
                s.variables["caller"] = kw[k].1
                kw.remove(at: k)
            }
            s.variables["varargs"] = .tuple(args.count > parameters.count ? Array(args[parameters.count...]) : [])
            s.variables["kwargs"] = .dict(JinjaDict(kw))
            let loopSaved = self.loopDepth
            self.loopDepth = 0
            defer { self.loopDepth = loopSaved }
            let text = try self.capture { _ = try self.run(body, scope: s) }
            return .string(text)
        }
    }

    package func callValue(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int) throws -> JinjaValue {
        switch f {
        case let .function(fn):
            do {
                return try JinjaBuiltins.charged(JinjaBuiltins.checkNesting(try fn.call(args, kwargs)), fn.name + "()")
            } catch let e as JinjaError where e.line == 0 {
                throw JinjaError(line: line, message: e.message)
            }
        case let .undefined(hint):
            throw JinjaError(line: line, message: f.unsafeMessage ?? hint)
        default:
            throw JinjaError(line: line, message: "'\(f.typeName)' object is not callable")
        }
    }

    // MARK: expressions

    package func eval(_ e: JinjaExpr, _ scope: JinjaScope, blockInput: JinjaValue = .undefined(hint: "")) throws -> JinjaValue {
        switch e {
        case let .literal(v): return v
        case .blockInput: return blockInput
        case let .name(n, _):
            return scope.lookup(n) ?? globals[n] ?? .undefinedName(n)
        case let .list(items): return try JinjaBuiltins.checkNesting(.list(try items.map { try eval($0, scope, blockInput: blockInput) }))
        case let .tuple(items): return try JinjaBuiltins.checkNesting(.tuple(try items.map { try eval($0, scope, blockInput: blockInput) }))
        case let .dict(pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try eval(k, scope, blockInput: blockInput)
                guard JinjaKey(key) != nil else { throw JinjaError(line: 0, message: "unhashable type: '\(key.typeName)'") }
                d[key] = try eval(v, scope, blockInput: blockInput)
            }
            return try JinjaBuiltins.checkNesting(.dict(d))
        case let .attribute(obj, name, line):
            let o = try eval(obj, scope, blockInput: blockInput)
            return try JinjaBuiltins.getAttribute(o, name, line: line)
        case let .item(obj, index, line):
            let o = try eval(obj, scope, blockInput: blockInput)
            let i = try eval(index, scope, blockInput: blockInput)
            return try JinjaBuiltins.getItem(o, i, line: line)
        case let .slice(obj, a, b, c, line):
            let o = try eval(obj, scope, blockInput: blockInput)
            func opt(_ x: JinjaExpr?) throws -> JinjaValue { try x.map { try eval($0, scope, blockInput: blockInput) } ?? .none }
            return try JinjaBuiltins.slice(o, try opt(a), try opt(b), try opt(c), line: line)
        case let .call(callee, args, kwargs, line):
            let f = try eval(callee, scope, blockInput: blockInput)
            let a = try args.map { try eval($0, scope, blockInput: blockInput) }
            let k = try kwargs.map { ($0.0, try eval($0.1, scope, blockInput: blockInput)) }
            return try callValue(f, a, k, line: line)
        case let .filter(value, name, args, kwargs, line):
            let v = try eval(value, scope, blockInput: blockInput)
            let a = try args.map { try eval($0, scope, blockInput: blockInput) }
            let k = try kwargs.map { ($0.0, try eval($0.1, scope, blockInput: blockInput)) }
            // An unknown filter the parser let through (inside an `if`): jinja2's runtime error.
            guard JinjaBuiltins.filters.contains(name) else {
                throw JinjaError(line: line, message: JinjaBuiltins.knownUnsupportedFilters.contains(name)
                    ? "the '\(name)' filter is not supported" : "No filter named '\(name)' found.")
            }
            do {
                return try JinjaBuiltins.charged(JinjaBuiltins.checkNesting(try JinjaBuiltins.applyFilter(name, v, a, k, line: line)), "the \(name) filter")
            } catch let err as JinjaError where err.line == 0 {
                throw JinjaError(line: line, message: err.message)
            }
        case let .test(value, name, args, negated, line):
            let v = try eval(value, scope, blockInput: blockInput)
            let a = try args.map { try eval($0, scope, blockInput: blockInput) }
            guard JinjaBuiltins.tests.contains(name) else {
                throw JinjaError(line: line, message: JinjaBuiltins.knownUnsupportedTests.contains(name)
                    ? "the '\(name)' test is not supported" : "No test named '\(name)' found.")
            }
            do {
                let r = try JinjaBuiltins.applyTest(name, v, a, line: line)
                return .bool(negated ? !r : r)
            } catch let err as JinjaError where err.line == 0 {
                throw JinjaError(line: line, message: err.message)
            }
        case let .not(x): return .bool(!(try eval(x, scope, blockInput: blockInput).truthy))
        case let .and(a, b):
            let l = try eval(a, scope, blockInput: blockInput)
            return l.truthy ? try eval(b, scope, blockInput: blockInput) : l
        case let .or(a, b):
            let l = try eval(a, scope, blockInput: blockInput)
            return l.truthy ? l : try eval(b, scope, blockInput: blockInput)
        case let .negate(x, plus, line):
            let v = try eval(x, scope, blockInput: blockInput)
            switch v {
            case let .int(i):
                if plus { return .int(i) }
                guard i != Int.min else { throw JinjaError(line: line, message: "integer overflow") }
                return .int(-i)
            case let .float(d): return .float(plus ? d : -d)
            case let .bool(b): return .int(plus ? (b ? 1 : 0) : (b ? -1 : 0))
            default: throw JinjaError(line: line, message: JinjaBuiltins.undefinedMessage(v) ?? "bad operand type for unary \(plus ? "+" : "-"): '\(v.typeName)'")
            }
        case let .binary(op, a, b, line):
            let l = try eval(a, scope, blockInput: blockInput)
            let r = try eval(b, scope, blockInput: blockInput)
            do {
                return try JinjaBuiltins.charged(JinjaBuiltins.binary(op, l, r), op)
            } catch let err as JinjaError where err.line == 0 {
                throw JinjaError(line: line, message: err.message)
            }
        case let .compare(first, ops, line):
            var left = try eval(first, scope, blockInput: blockInput)
            for (op, e) in ops {
                let right = try eval(e, scope, blockInput: blockInput)
                let ok: Bool
                do { ok = try JinjaBuiltins.compare(op, left, right) } catch let err as JinjaError where err.line == 0 {
                    throw JinjaError(line: line, message: err.message)
                }
                if !ok { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(test, then, otherwise):
            if try eval(test, scope, blockInput: blockInput).truthy { return try eval(then, scope, blockInput: blockInput) }
            if let otherwise { return try eval(otherwise, scope, blockInput: blockInput) }
            return .undefined(hint: "the inline if-expression on line evaluated to false and no else section was defined.")
        }
    }
}
