"""render-chat vs the real thing: jinja2 configured as transformers configures it, and
transformers' AutoTokenizer.apply_chat_template(tokenize=False) itself.

Each template renders >= 100 seeded conversations through ONE nnpipe run (--jsonl batch mode).
"""
import json
import random
import shutil
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

from conftest import run_nnpipe

HERE = Path(__file__).resolve().parent / "chat_templates"
N_CONVERSATIONS = 120


# --- the oracle environment (transformers/utils/chat_template_utils.py, minus the generation tracker)
def oracle_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
    return env


def jinja_render(source, **ctx):
    try:
        return oracle_env().from_string(source).render(**ctx)
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        return {"error": str(e)}


# --- seeded conversations -------------------------------------------------------------------------
TEXTS = [
    "Hello!", "What is 2 + 2?", "Привет, как дела?", "你好，世界", "emoji 🙂🚀 and accents: é à ü",
    "line one\nline two\n\nline four", "  padded with spaces  ", "quotes ' and \" and \\ backslash",
    "<think>\nLet me reason about it.\n</think>\n\nThe answer is 4.", "<think>short</think>final",
    "tabs\tand {braces} {{ not a template }} {% nope %}", "", "<tool_response>x</tool_response>",
    "Ends with a question?", "a" * 300, "mixed CASE Words-with-dashes (and parens)", "\u2028odd separators\x0b",
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather.\nUse it often.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "description": "City name, e.g. 'Paris'"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                          "days": {"type": "integer", "minimum": 1, "maximum": 10}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web — ünïcode",
                                      "parameters": {"type": "object", "properties": {
                                          "query": {"type": "string"},
                                          "filters": {"type": "object", "properties": {
                                              "site": {"type": "string"}, "year": {"type": ["integer", "null"]},
                                              "score": {"type": "number", "default": 0.5}}},
                                          "tags": {"type": "array", "items": {"type": "string"}}},
                                          "required": ["query", "filters"]}}},
    {"type": "function", "function": {"name": "noop", "description": "", "parameters": {}}},
]
ARGS = [{"city": "Paris", "days": 3}, {"query": "jinja \"quotes\"", "filters": {"year": None, "score": 1.0e-5}},
        {"nested": {"list": [1, 2.5, True, None, "ü"]}, "empty": {}}, {}]


def make_conversation(rng, *, python_extras):
    """python_extras: also use None values and reasoning_content (only for the transformers oracle,
    which preprocesses them; raw jinja2 would see them differently)."""
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": rng.choice(TEXTS)})
    for _ in range(rng.randint(1, 4)):
        msgs.append({"role": "user", "content": rng.choice(TEXTS)})
        if rng.random() < 0.3:
            calls = []
            for _ in range(rng.randint(1, 2)):
                args = rng.choice(ARGS)
                fn = {"name": rng.choice(["get_weather", "search", "noop"]),
                      "arguments": args if rng.random() < 0.6 else json.dumps(args, ensure_ascii=False)}
                calls.append({"type": "function", "function": fn} if rng.random() < 0.8 else fn)
            msg = {"role": "assistant", "content": rng.choice(["", "Let me check.", TEXTS[8]]), "tool_calls": calls}
            if python_extras and rng.random() < 0.2:
                msg["content"] = None
            msgs.append(msg)
            for _ in calls:
                msgs.append({"role": "tool", "content": rng.choice(['{"temp": 21}', "result\nwith lines", "ok"])})
        if rng.random() < 0.8 or msgs[-1]["role"] == "tool":
            msg = {"role": "assistant", "content": rng.choice(TEXTS)}
            if python_extras and rng.random() < 0.2:
                msg["reasoning_content"] = rng.choice(["I should answer.", "\nthinking\n"])
            msgs.append(msg)
    rec = {"messages": msgs, "add_generation_prompt": rng.random() < 0.5}
    if rng.random() < 0.4:
        rec["tools"] = rng.sample(TOOLS, rng.randint(1, len(TOOLS)))
    r = rng.random()
    if r < 0.33:
        rec["enable_thinking"] = False
    elif r < 0.66:
        rec["enable_thinking"] = True
    return rec


def conversations(seed, python_extras):
    rng = random.Random(seed)
    return [make_conversation(rng, python_extras=python_extras) for _ in range(N_CONVERSATIONS)]


def run_batch(tmp_path, records, *args):
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    r = run_nnpipe("render-chat", *args, "--jsonl", path, check=False)
    lines = r.stdout.split("\n")[:-1]  # not splitlines(): U+2028 may appear raw inside the JSON
    assert len(lines) == len(records), r.stderr
    return [json.loads(line) for line in lines]


def assert_same(records, got, want):
    n_ok = 0
    for rec, g, w in zip(records, got, want):
        if isinstance(w, dict):
            assert isinstance(g, dict) and "error" in g, f"oracle failed ({w['error']}) but nnpipe rendered; {rec}"
        else:
            assert g == w, f"mismatch for {json.dumps(rec, ensure_ascii=False)}"
            n_ok += 1
    assert n_ok >= len(records) // 2, "too few conversations rendered: the comparison would be vacuous"


# --- transformers' apply_chat_template ------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, fixtures_dir):
    d = tmp_path_factory.mktemp("qwen-tokenizer")
    for f in (fixtures_dir / "qwen-tokenizer").iterdir():
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def hf_render(tok, rec, template=None):
    kwargs = {k: v for k, v in rec.items() if k not in ("messages", "add_generation_prompt", "tools")}
    try:
        return tok.apply_chat_template(rec["messages"], tools=rec.get("tools"), chat_template=template,
                                       tokenize=False, add_generation_prompt=rec["add_generation_prompt"], **kwargs)
    except (jinja2.exceptions.TemplateError, TypeError, ValueError) as e:
        return {"error": str(e)}


def template_sources(fixtures_dir):
    return {
        "qwen1.5": (fixtures_dir / "chat-templates" / "qwen1.5-chat.jinja").read_text(encoding="utf-8"),
        "qwen2.5-style": (HERE / "qwen2.5-style.jinja").read_text(encoding="utf-8"),
    }


def test_qwen3_model_template_matches_transformers(tmp_path, tokenizer, tokenizer_dir):
    # --model: the template and special tokens come from tokenizer_config.json, as in transformers.
    records = conversations(3, python_extras=True)
    got = run_batch(tmp_path, records, "--model", tokenizer_dir)
    assert_same(records, got, [hf_render(tokenizer, r) for r in records])


@pytest.mark.parametrize("name", ["qwen1.5", "qwen2.5-style"])
def test_template_matches_transformers(tmp_path, tokenizer, fixtures_dir, name):
    source = template_sources(fixtures_dir)[name]
    tmpl = tmp_path / f"{name}.jinja"
    tmpl.write_text(source, encoding="utf-8")
    records = conversations(hash(name) % 1000 + 15, python_extras=True)
    got = run_batch(tmp_path, records, "--template", tmpl, "--vars", json.dumps(tokenizer.special_tokens_map))
    assert_same(records, got, [hf_render(tokenizer, r, template=source) for r in records])


# --- raw jinja2 ---------------------------------------------------------------------------------
JINJA_TEMPLATES = {
    "qwen1.5": lambda fx: (fx / "chat-templates" / "qwen1.5-chat.jinja").read_text(encoding="utf-8"),
    "qwen3": lambda fx: json.loads((fx / "qwen-tokenizer" / "tokenizer_config.json").read_text())["chat_template"],
    "qwen2.5-style": lambda fx: (HERE / "qwen2.5-style.jinja").read_text(encoding="utf-8"),
    "synthetic-features": lambda fx: (HERE / "synthetic-features.jinja").read_text(encoding="utf-8"),
}


@pytest.mark.parametrize("name", sorted(JINJA_TEMPLATES))
def test_template_matches_jinja2(tmp_path, fixtures_dir, name):
    source = JINJA_TEMPLATES[name](fixtures_dir)
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text(source, encoding="utf-8")
    records = conversations(len(name) * 7 + 1, python_extras=False)
    want = []
    for r in records:
        ctx = {"tools": None, "documents": None, **r}
        want.append(jinja_render(source, **ctx))
    got = run_batch(tmp_path, records, "--template", tmpl)
    assert_same(records, got, want)


# --- small templates: whitespace control, expressions, filters, errors --------------------------
SNIPPETS = [
    "a\n  {% if true %}\n  b\n  {% endif %}\n c", "a  {%- if true -%}  b  {%- endif -%}  c", "x {%+ if true +%}\ny{% endif %}",
    "  {# comment #}\nz", "  {#- c -#}  z", "{{ 1 }}\n{{ 2 }}\n", "a\n{% raw %}  {{ x }}\n{% endraw %}\nb", "\t{% if 1 %}\r\nT{% endif %}\r\n",
    "{% for i in range(3) %}\n  {{ i }}\n{% endfor %}", "   {{- 'a' -}}   b", "{{ '\\n\\t\\\\ \\x41\\u00e9\\d' }}",
    "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7.5 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ -7.5 % 2 }} {{ 2 ** -2 }} {{ -2 ** 2 }} {{ 10 / 4 }}",
    "{{ 1e100 }} {{ 1.5e-7 }} {{ 123456789012345678.0 }} {{ 0.0001 }} {{ -0.0 }} {{ 100.0 }} {{ 1/3 }}",
    "{{ [1, 'a', none, true, 2.0, (1,), {'k': 'v'}] }} {{ 'it\\'s' }} {{ ['it\\'s', \"q\\\"\"] }}",
    "{{ 'abc'[::-1] }} {{ [1,2,3,4][-2:] }} {{ 'héllo'[1:3] }} {{ [1,2,3][5:] }} {{ 'abcdef'[-100:2] }} {{ [0,1,2,3,4,5][4:1:-2] }}",
    "{{ 'a,b,,c'.split(',') }} {{ '  a b  '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ 'a b c'.rsplit(None, 1) }}",
    "{{ 'xxhixx'.strip('x') }} {{ '  hi  '.lstrip() }}|{{ '  hi  '.rstrip() }}|{{ 'hello world'.title() }} {{ \"they're bill's\".title() }}",
    "{{ 'hello'.replace('l', 'L', 1) }} {{ 'abc'.replace('', '-') }} {{ 'banana'.count('an') }} {{ 'banana'.find('na') }} {{ 'banana'.rfind('na') }}",
    "{{ '{} and {}'.format(1, 'two') }} {{ '{0}{name}'.format('x', name='y') }} {{ ', '.join(['a', 'b']) }}",
    "{{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'a', 'B']|sort }} {{ ['b', 'A', 'a', 'B']|sort(case_sensitive=true) }} {{ ['a', 'A', 'b']|unique|list }}",
    "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) }} {{ {'x': 1}|items|list }}",
    "{{ 'line1\\nline2\\n\\nline4'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent('> ', blank=true) }}",
    "{{ '3'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int(5) }} {{ '0x1F'|int(0, 16) }} {{ '2.5'|float }} {{ 'nan'|float }} {{ 3.7|int }} {{ -3|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 1.25|round(1) }} {{ 2.7|round(0, 'floor') }}",
    "{{ x|default('d') }} {{ none|default('d') }} {{ ''|default('d', true) }} {{ x is defined }} {{ x is undefined }} {{ x|length }}",
    "{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, none, 'a']|select|list }} {{ [1, 2, 3]|select('gt', 1)|list }} {{ [1,2]|map('string')|list }}",
    "{{ [{'a': 1}, {'a': 2}, {'b': 3}]|selectattr('a')|list }} {{ [{'a': 1}, {'a': 2}]|selectattr('a', 'equalto', 2)|list }} {{ [{'a': {'b': 1}}]|map(attribute='a.b')|list }} {{ [{'a': 1}, {}]|map(attribute='a', default=0)|list }}",
    "{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} {{ []|first }}|{{ [1, 2, 3]|join('-') }} {{ [1, 2, 3]|sum }} {{ [1, 5, 3]|max }} {{ ['b', 'A']|min }} {{ 'abc'|reverse }} {{ [1, 2]|reverse|list }}",
    "{{ 'Hello World'|lower }} {{ 'hello'|upper }} {{ 'hello wORLD-x(y'|title }} {{ 'hELLO'|capitalize }} {{ '  x  '|trim }} {{ 'xxaxx'|trim('x') }} {{ 'a & <b> \"c\" \\'d\\''|e }} {{ 'one two  three'|wordcount }}",
    "{{ {'a': [1, 2.0, none, true, 'é\\n\"']}|tojson }} {{ {'b': 1, 'a': {'c': []}}|tojson(indent=2) }} {{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} {{ 'é'|tojson(ensure_ascii=true) }} {{ [1, {}]|tojson(indent='\\t') }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' in 'abc' }} {{ 2 not in [1, 2] }} {{ 'k' in {'k': 1} }} {{ none == none }}",
    "{{ 1 and 'x' }} {{ 0 or 'y' }} {{ not none }} {{ '' or [] }} {{ 'yes' if 0 else 'no' }} {{ 'a' if 1 }}|{{ 'a' if 0 }}|",
    "{{ [1] + [2] }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ 'x' ~ 1 ~ 2.5 ~ none ~ true }} {{ y ~ 'z' }} {{ (1, 2) }} {{ () }} {{ (1,) }}",
    "{% set ns = namespace(a=1, b='x') %}{% set ns.a = ns.a + 1 %}{% for i in [1, 2] %}{% set ns.b = ns.b ~ i %}{% endfor %}{{ ns.a }} {{ ns.b }} {{ ns }}",
    "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set x = 5 %}{% endif %}{{ x }}",
    "{% for a, b in {'k': 1, 'j': 2}.items() %}{{ a }}={{ b }}{{ loop.index }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }};{% endfor %}{% for x in [] %}no{% else %}empty{% endfor %}",
    "{% for x in range(10) if x is odd %}{{ x }}{{ loop.length }}{% if loop.index >= 3 %}{% break %}{% endif %}{% endfor %}|{% for x in range(1, 10, 3) %}{% if x == 4 %}{% continue %}{% endif %}{{ x }}{% endfor %}",
    "{% for x in 'ab' %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle(1, 2, 3) }} {% endfor %}{% for x in {'q': 1} %}{{ x }}{{ loop }}{% endfor %}",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }} {{ greet(name='C') }}",
    "{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inner {{ 1 + 1 }}{% endcall %}",
    "{% set t %}  block {{ 'v' }}  {% endset %}[{{ t }}]{% set u | upper %}up{% endset %}{{ u }}{% filter trim|upper %}  f  {% endfilter %}",
    "{{ d.a }} {{ d['a'] }} {{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.zz is defined }} {{ d.keys()|list }} {{ d.values()|list }} {{ d|length }} {{ d.items()|list }}",
    "{{ l[0] }} {{ l[-1] }} {{ l[10] is defined }} {{ l.index(2) }} {{ l.count(1) }} {{ l|length }} {{ l is sequence }} {{ 'x' is sequence }} {{ 1 is number }} {{ true is number }} {{ 1 is integer }} {{ true is integer }}",
    "{{ dict(a=1, b=2) }} {{ dict({'x': 1}, y=2) }} {{ namespace(z=1).z }} {{ range(3)|list }} {{ range(5, 0, -2)|list }}",
    "{{ 10 is divisibleby 5 }} {{ 3 is odd }} {{ 'a' is string }} {{ none is none }} {{ {} is mapping }} {{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 'abc' is lower }} {{ 'Abc' is upper }} {{ true is true }} {{ 0 is false }} {{ 'x' is in ['x'] }} {{ 1 is sameas 1 }}",
    "{{ '%s'|length }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.endswith('bc') }} {{ 'a\\nb\\r\\nc'.splitlines() }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }} {{ ' '.isspace() }}",
    "{{ raise_exception('custom failure') }}",
    "{{ 1 / 0 }}", "{{ 'a' + 1 }}", "{{ undefined_thing.attr }}", "{{ d.missing.deeper }}", "{{ [1].append(2) }}", "{{ range(200000)|length }}",
    "{{ none.attr }}|{{ 5['x'] }}|", "{% set x = [1, 2] %}{{ x|tojson }} {{ x is iterable }} {{ x|batch(1)|list }}",
]
SNIPPET_CONTEXT = {"d": {"a": 1, "b": [1, 2]}, "l": [1, 2, 3, 1], "messages": [{"role": "user", "content": "hi"}]}


def test_snippets_match_jinja2(tmp_path):
    failures = []
    rendered = 0
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps(SNIPPET_CONTEXT["messages"]))
    for i, src in enumerate(SNIPPETS):
        want = jinja_render(src, tools=None, documents=None, add_generation_prompt=False, **SNIPPET_CONTEXT)
        t = tmp_path / f"s{i}.jinja"
        t.write_text(src, encoding="utf-8")
        ctx = {k: v for k, v in SNIPPET_CONTEXT.items() if k != "messages"}
        r = run_nnpipe("render-chat", "--template", t, "--messages", msgs, "--vars", json.dumps(ctx), check=False)
        if isinstance(want, dict):
            if r.returncode == 0:
                failures.append(f"#{i} {src!r}: jinja2 raised {want['error']!r}, nnpipe rendered {r.stdout!r}")
        elif r.returncode != 0 or r.stdout != want:
            failures.append(f"#{i} {src!r}:\n  jinja2: {want!r}\n  nnpipe: {r.stdout!r} {r.stderr.strip()}")
        else:
            rendered += 1
    assert not failures, "\n".join(failures)
    assert rendered >= len(SNIPPETS) - 12


def test_raise_exception_message(tmp_path):
    t = tmp_path / "t.jinja"
    t.write_text("ok\n{% if messages|length > 0 %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}")
    msgs = tmp_path / "m.json"
    msgs.write_text('[{"role": "user", "content": "x"}]')
    r = run_nnpipe("render-chat", "--template", t, "--messages", msgs, check=False)
    assert r.returncode != 0 and "Conversation roles must alternate" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("src,line,col,what,jinja_rejects", [
    ("ok\n  {% include 'other.jinja' %}", 2, 6, "include", False),  # jinja2 needs a loader: unsupported here
    ("{{ x | nosuchfilter }}", 1, 8, "nosuchfilter", True),
    ("{% if x is nosuchtest %}{% endif %}", 1, 12, "nosuchtest", False),  # jinja2 3.x defers this to runtime
    ("line\n{% for x in y %}\n{{ x }", 3, 6, "unexpected '}'", True),
    ("{% frobnicate %}", 1, 4, "frobnicate", True),
    ("a\nb {% for x in y recursive %}{% endfor %}", 2, 17, "recursive", False),
])
def test_unsupported_construct_errors_with_position(tmp_path, src, line, col, what, jinja_rejects):
    if jinja_rejects:
        with pytest.raises(jinja2.exceptions.TemplateSyntaxError):
            oracle_env().from_string(src)
    t = tmp_path / "bad.jinja"
    t.write_text(src)
    msgs = tmp_path / "m.json"
    msgs.write_text('[{"role": "user", "content": "x"}]')
    r = run_nnpipe("render-chat", "--template", t, "--messages", msgs, check=False)
    assert r.returncode != 0 and r.stdout == ""
    assert f"{t}:{line}:{col}:" in r.stderr and what in r.stderr, r.stderr
