// Chat-template interpreter: expressions, filters, whitespace control, scoping, errors and
// limits. Byte-exact agreement with jinja2/transformers is checked by
// tests/conformance/test_chat_template.py; the expectations here are jinja2's outputs.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/chat_template.h"

using namespace nnpipe;

namespace {

std::string R(const std::string& src, const std::string& ctx = "{}") {
  return ChatTemplate(src, "t").render(parse_ordered_json(ctx, "ctx"));
}

// The message of the Error that rendering (or parsing) `src` throws.
std::string Err(const std::string& src, const std::string& ctx = "{}") {
  try {
    R(src, ctx);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(ChatTemplateExpr, Arithmetic) {
  EXPECT_EQ(R("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ -2 ** 2 }} {{ 10 / 4 }} {{ "
              "4 / 2 }}"),
            "3 -4 2 1024 4 2.5 2.0");
  EXPECT_EQ(
      R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ 'a' ~ 1 ~ none }}"),
      "7 9 abab [1, 2] a1None");
  EXPECT_EQ(R("{{ 1.0 }} {{ 1e-5 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 123.456 }} {{ 1e15 }}"),
            "1.0 1e-05 1e+16 0.30000000000000004 123.456 1000000000000000.0");
}

TEST(ChatTemplateExpr, ComparisonsAndLogic) {
  EXPECT_EQ(R("{{ 1 == 1.0 }} {{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 2 not in [1] }} {{ 0 or 'x' }} "
              "{{ 1 and [] }}"),
            "True True True True x []");
  EXPECT_EQ(R("{{ 'y' if 0 else 'n' }}|{{ 'y' if 0 }}|{{ not none }}"), "n||True");
}

TEST(ChatTemplateExpr, ReprOfContainers) {
  EXPECT_EQ(R("{{ [1, 'a', none, true, (1,)] }} {{ {'k': \"it's\"} }}"),
            "[1, 'a', None, True, (1,)] {'k': \"it's\"}");
  EXPECT_EQ(R("{{ '\\n\\t\\x41\\u00e9' }}"), "\n\tAé");
}

TEST(ChatTemplateExpr, SlicingAndIndexing) {
  EXPECT_EQ(R("{{ 'héllo'[::-1] }} {{ [1,2,3,4][-2:] }} {{ [0,1,2,3,4,5][4:1:-2] }} {{ 'abc'[-1] "
              "}} {{ x[1] }}",
              R"({"x": [5, 6]})"),
            "olléh [3, 4] [4, 2] c 6");
}

TEST(ChatTemplateExpr, PreservesContextKeyOrder) {
  EXPECT_EQ(R("{{ d|tojson }} {{ d.keys()|list }}",
              R"({"d": {"z": 1, "a": {"y": [1.5, null], "b": "é"}}})"),
            R"({"z": 1, "a": {"y": [1.5, null], "b": "é"}} ['z', 'a'])");
}

TEST(ChatTemplateFilters, Common) {
  EXPECT_EQ(R("{{ 'hello wORLD'|title }} {{ 'aBC'|capitalize }} {{ ' x '|trim }} {{ "
              "'aXa'|replace('a', 'b') }} {{ [3,1,2]|sort }}"),
            "Hello World Abc x bXb [1, 2, 3]");
  EXPECT_EQ(R("{{ [1,2,3]|first }}{{ [1,2,3]|last }} {{ [1,2]|join(',') }} {{ x|default('d') }} {{ "
              "''|default('d', true) }} {{ 'ab'|length }}"),
            "13 1,2 d d 2");
  EXPECT_EQ(R("{{ ['b','A','a']|unique|list }} {{ [1,2,3,4]|select('even')|list }} {{ [{'a': 1}, "
              "{'a': 0}]|selectattr('a')|list }}"),
            "['b', 'A'] [2, 4] [{'a': 1}]");
  EXPECT_EQ(R("{{ [{'n': 'x'}, {'n': 'y'}]|map(attribute='n')|join }} {{ {'b': 1, 'a': 2}|dictsort "
              "}} {{ 'a\\nb'|indent(2) }}"),
            "xy [('a', 2), ('b', 1)] a\n  b");
  EXPECT_EQ(R("{{ '3'|int + 1 }} {{ 'x'|int }} {{ '2.5'|float }} {{ 2.5|round }} {{ -3|abs }} {{ "
              "'a<b'|e }}"),
            "4 0 2.5 2.0 3 a&lt;b");
}

TEST(ChatTemplateFilters, ToJsonLikeTransformers) {
  std::string ctx = R"({"x": {"a": [1, 2.0, "é\n"], "b": null, "c": {}}})";
  EXPECT_EQ(R("{{ x|tojson }}", ctx), R"({"a": [1, 2.0, "é\n"], "b": null, "c": {}})");
  EXPECT_EQ(R("{{ x|tojson(indent=2) }}", ctx),
            "{\n  \"a\": [\n    1,\n    2.0,\n    \"é\\n\"\n  ],\n  \"b\": null,\n  \"c\": {}\n}");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true, separators=(',', ':')) }}"),
            R"({"a":2,"b":1})");
}

TEST(ChatTemplateStrings, Methods) {
  EXPECT_EQ(R("{{ 'a b  c'.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ "
              "'xxhixx'.strip('x') }}"),
            "['a', 'b', 'c'] ['a', 'b,c'] ['a,b', 'c'] hi");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'hello "
              "world'.title() }} {{ 'banana'.count('a') }} {{ 'ab'.find('b') }}"),
            "True True Hello World 3 1");
}

TEST(ChatTemplateWhitespace, TrimAndLstripBlocks) {
  EXPECT_EQ(R("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(R("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(R("x  {%+ if true +%}\ny{% endif %}"), "x  \ny");
  EXPECT_EQ(R("  {{ 1 }}\n{{ 2 }}\n"),
            "  1\n2");  // neither applies to {{ }}; one trailing newline dropped
  EXPECT_EQ(R("  {# c #}\nz"), "z");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(ChatTemplateStatements, LoopVariables) {
  EXPECT_EQ(
      R("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 "
        "}}{{ loop.first|int }}{{ loop.last|int }}{{ loop.length }} {% endfor %}"),
      "1032103 2121003 3210013 ");
  EXPECT_EQ(R("{% for x in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ "
              "loop.cycle('o','e') }} {% endfor %}"),
            "-2-o 1-3-e 2--o ");
  EXPECT_EQ(R("{% for x in range(10) if x is odd %}{{ x }}/{{ loop.length }} {% if x > 4 %}{% "
              "break %}{% endif %}{% endfor %}"),
            "1/5 3/5 5/5 ");
  EXPECT_EQ(R("{% for k, v in {'a': 1}.items() %}{{ k }}{{ v }}{% endfor %}{% for x in [] %}x{% "
              "else %}empty{% endfor %}"),
            "a1empty");
}

TEST(ChatTemplateStatements, ScopingAndNamespace) {
  // A loop iteration is a scope (jinja2): plain `set` does not survive it; namespaces do.
  EXPECT_EQ(R("{% set x = 0 %}{% for i in [1,2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}"),
            "120");
  EXPECT_EQ(R("{% set ns = namespace(n=0) %}{% for i in [1,2] %}{% set ns.n = ns.n + i %}{% endfor "
              "%}{{ ns.n }}"),
            "3");
  EXPECT_EQ(R("{% set b %}in {{ 1 }}{% endset %}[{{ b }}]{% filter upper %}up{% endfilter %}"),
            "[in 1]UP");
  EXPECT_EQ(R("{% macro m(a, b='d') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}"),
            "1d12");
  EXPECT_EQ(R("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}x{% endcall %}"),
            "[x]");
}

TEST(ChatTemplateErrors, RaiseException) {
  EXPECT_NE(Err("{{ raise_exception('roles must alternate') }}").find("roles must alternate"),
            std::string::npos);
}

TEST(ChatTemplateErrors, PositionsOfUnsupportedConstructs) {
  EXPECT_EQ(Err("a\n  {% include 'x' %}"),
            "t:2:6: unsupported statement 'include' (not available to chat templates in nnpipe)");
  EXPECT_EQ(Err("{{ x | nope }}"), "t:1:8: unknown filter 'nope'");
  EXPECT_EQ(Err("{% if x is nope %}{% endif %}"), "t:1:12: unknown test 'nope'");
  EXPECT_EQ(Err("{% for x in y %}"),
            "t:1:17: unexpected end of template, expected 'endfor' or 'else'");
  EXPECT_EQ(Err("\n {{ 1 / 0 }}"), "t:2:7: division by zero");
  EXPECT_EQ(Err("{{ x.y }}"), "t:1:5: 'x' is undefined");
  EXPECT_EQ(Err("{{ [].append(1) }}"),
            "t:1:13: access to attribute 'append' of 'list' object is unsafe.");
  EXPECT_EQ(Err("{% break %}"), "t:1:4: 'break' outside of a loop");
}

TEST(ChatTemplateErrors, Limits) {
  std::string deep = std::string(5000, '(') + "1" + std::string(5000, ')');
  EXPECT_NE(Err("{{ " + deep + " }}").find("nested more than"), std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_NE(Err(chain + " }}").find("nested more than"), std::string::npos);
  EXPECT_NE(Err("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("deep"), std::string::npos);
  EXPECT_NE(Err("{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}")
                .find("output larger than"),
            std::string::npos);
  EXPECT_NE(Err("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100) "
                "%}{% endfor %}{% endfor %}{% endfor %}")
                .find("loop iterations"),
            std::string::npos);
  EXPECT_NE(Err("{{ range(1000000)|length }}").find("MAX_RANGE"), std::string::npos);
  EXPECT_NE(Err("{% set ns = namespace() %}{% set ns.me = [ns] %}").find("contains itself"),
            std::string::npos);
}

TEST(ChatTemplateApply, Qwen15FixtureSmoke) {
  std::string src =
      read_file(std::string(NNPIPE_FIXTURES_DIR) + "/chat-templates/qwen1.5-chat.jinja");
  EXPECT_EQ(src, chatml_template_source());
  ChatTemplate t(src, "qwen1.5");
  auto msgs = parse_ordered_json(
      R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])", "m");
  EXPECT_EQ(
      apply_chat_template(t, msgs, true),
      "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
      "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(t, msgs, false).size(),
            apply_chat_template(t, msgs, true).size() - 22);
}

TEST(ChatTemplateApply, TransformersPreprocessing) {
  ChatTemplate t(
      "{{ tools is none }} {{ messages[0].keys()|list }} {{ add_generation_prompt }} {{ eos_token "
      "}}",
      "t");
  auto msgs = parse_ordered_json(
      R"([{"role": "assistant", "content": null, "reasoning_content": "r"}])", "m");
  EXPECT_EQ(
      apply_chat_template(t, msgs, false, parse_ordered_json(R"({"eos_token": "</s>"})", "x")),
      "True ['thinking', 'role', 'reasoning_content'] False </s>");
  EXPECT_THROW(apply_chat_template(t, ordered_json::array(), false), Error);
}
