#!/usr/bin/env python3
"""Fails when a Swift function or initializer in Sources/ is longer than 80 lines (from its
`func`/`init` line to its closing brace, by brace matching; `package` functions included), except
the Jinja evaluator's dispatch, which is one case per filter, operator or method (docs/architecture.md).
    python3 scripts/check_function_length.py [LIMIT]
"""
import os
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
# file name: function names allowed over the limit (dispatch tables of the Jinja evaluator).
ALLOWED = {
    "JinjaFilters.swift": {"func applyFilter"},
    "JinjaEvaluator.swift": {"func eval"},
    "JinjaBuiltins.swift": {"func binary", "func stringMethod"},
}
DECL = re.compile(r'^\s*(?:@\w+(?:\([^)]*\))?\s+)*(?:(?:package|public|private|internal|fileprivate|static|class|'
                  r'override|mutating|final|nonisolated|convenience|required)\s+)*(func\s+[^\s(<]+|init[?!]?)\s*[(<]')


def lengths(path):
    """(lines, first line, name) of each function in one file."""
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    for i, line in enumerate(lines):
        m = DECL.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(?:\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            depth += code.count("{") - code.count("}")
            started = started or "{" in code
            if (started and depth <= 0) or (not started and j > i + 12):
                break
            j += 1
        if started:
            yield j - i + 1, i + 1, m.group(1)


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Sources")
    long, count = [], 0
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if not f.endswith(".swift"):
                continue
            path = os.path.join(d, f)
            for n, line, name in lengths(path):
                count += 1
                if n > LIMIT and name not in ALLOWED.get(f, set()):
                    long.append(f"{os.path.relpath(path, os.path.join(root, '..'))}:{line}: {name} is {n} lines (limit {LIMIT})")
    for entry in sorted(long):
        print(entry)
    print(f"function length: {count} functions, {len(long)} over {LIMIT} lines"
          + (" outside the Jinja dispatch" if not long else ""))
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
