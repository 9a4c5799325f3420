import MoEFormats
/// Which names a frame reads and which it assigns before reading, as jinja2 decides when it
/// compiles a template. jinja2 gives the template, each for-loop body and else, macro, call
/// block, `with`, `set` block and `{% generation %}` body a frame of its own; a name whose first
/// use in a frame is an assignment is local to that frame from its start: undefined until
/// assigned, not the caller's value of the same name, unless an enclosing frame uses the name
/// (then the frame starts from the enclosing value). At the top level this means a template
/// variable assigned before any read ignores a value the caller passed under that name.
/// Assignments inside `if` branches do not count: jinja2 merges the branches so that such a
/// name starts from the caller's (or enclosing) value.
package struct JinjaFrame {
    /// Every name the frame's own statements read or assign.
    package var refs: Set<String> = []
    /// Names assigned before any read, in order.
    package var assignedFirst: [String] = []

    /// The frame of `body`, after `assigned` (loop targets, macro parameters) and `reads`
    /// (a loop's condition).
    package init(_ body: [JinjaNode], assigned: [String] = [], reads: [JinjaExpr] = []) {
        var seen: Set<String> = []
        var branchDepth = 0
        func load(_ n: String) { seen.insert(n); refs.insert(n) }
        func store(_ n: String) {
            if seen.insert(n).inserted && branchDepth == 0 { assignedFirst.append(n) }
            refs.insert(n)
        }
        func target(_ t: JinjaTarget) {
            switch t {
            case let .name(n): store(n)
            case let .tuple(ts): ts.forEach(target)
            case let .attribute(ns, _): load(ns)
            }
        }
        func nodes(_ list: [JinjaNode]) {
            for node in list {
                switch node {
                case .text, .breakLoop, .continueLoop, .generation: break
                case let .output(e, _): JinjaFrame.names(in: e, load)
                case let .conditional(branches, otherwise):
                    // The first test is read before any branch; `elif` tests belong to a branch.
                    for (i, (c, b)) in branches.enumerated() {
                        if i > 0 { branchDepth += 1 }
                        JinjaFrame.names(in: c, load)
                        if i == 0 { branchDepth += 1 }
                        nodes(b)
                        branchDepth -= 1
                    }
                    branchDepth += 1
                    nodes(otherwise)
                    branchDepth -= 1
                case let .loop(_, iterable, _, _, _, _, _, _): JinjaFrame.names(in: iterable, load)
                case let .set(t, e, _): JinjaFrame.names(in: e, load); target(t)
                case let .setBlock(t, filter, _, _, _):
                    if let filter { JinjaFrame.names(in: filter, load) }
                    target(t)
                case let .macro(name, _, _, _, _): store(name)
                case let .callBlock(call, _, _, _, _): JinjaFrame.names(in: call, load)
                case let .filterBlock(f, body, _): JinjaFrame.names(in: f, load); nodes(body)
                case let .with(assignments, _, _): for (_, e) in assignments { JinjaFrame.names(in: e, load) }
                }
            }
        }
        assigned.forEach(store)
        for e in reads { JinjaFrame.names(in: e, load) }
        nodes(body)
    }

    /// Calls `visit` for every variable name read in `e`, left to right.
    package static func names(in e: JinjaExpr, _ visit: (String) -> Void) {
        switch e {
        case .literal, .blockInput: break
        case let .name(n, _): visit(n)
        case let .list(items), let .tuple(items): items.forEach { names(in: $0, visit) }
        case let .dict(pairs): for (k, v) in pairs { names(in: k, visit); names(in: v, visit) }
        case let .attribute(o, _, _): names(in: o, visit)
        case let .item(o, i, _): names(in: o, visit); names(in: i, visit)
        case let .slice(o, a, b, c, _): names(in: o, visit); [a, b, c].forEach { $0.map { names(in: $0, visit) } }
        case let .call(f, args, kwargs, _), let .filter(f, _, args, kwargs, _):
            names(in: f, visit); args.forEach { names(in: $0, visit) }; kwargs.forEach { names(in: $0.1, visit) }
        case let .test(v, _, args, _, _): names(in: v, visit); args.forEach { names(in: $0, visit) }
        case let .not(x), let .negate(x, _, _): names(in: x, visit)
        case let .binary(_, a, b, _), let .and(a, b), let .or(a, b): names(in: a, visit); names(in: b, visit)
        case let .compare(first, ops, _): names(in: first, visit); ops.forEach { names(in: $0.1, visit) }
        case let .conditional(test, then, otherwise):
            names(in: test, visit); names(in: then, visit); otherwise.map { names(in: $0, visit) }
        }
    }

    /// Names of a target, in order.
    package static func assignedNames(_ t: JinjaTarget) -> [String] {
        switch t {
        case let .name(n): return [n]
        case let .tuple(ts): return ts.flatMap(assignedNames)
        case .attribute: return []
        }
    }
}
