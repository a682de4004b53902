// Private to the chat-template interpreter: the value model (Python objects as jinja2 sees them),
// the AST, and the entry points of the lexer, parser, evaluator and builtins. See chat_template.h.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/json.h"

namespace nnpipe::jinja {

// Limits that keep hostile templates from hanging or exhausting memory (jinja2 itself has none;
// chat templates never come close).
inline constexpr size_t kMaxOutputBytes = size_t{64} << 20;
inline constexpr size_t kMaxStringBytes = size_t{64} << 20;
inline constexpr size_t kMaxListItems = size_t{1} << 22;
inline constexpr uint64_t kMaxLoopIterations = 2'000'000;
inline constexpr int kMaxParseDepth = 200;
inline constexpr int kMaxCallDepth = 100;
inline constexpr int kMaxValueDepth = 500;
// A template's source is at most this long (real chat templates are a few kB; Qwen3's is 4 kB).
inline constexpr size_t kMaxTemplateBytes = size_t{1} << 20;
// The total budget of one render, so that a template cannot spend more than seconds of CPU or a
// few hundred MiB however it combines the per-value limits above. Steps: one per statement or
// expression node evaluated, per loop iteration, per container element that a builtin, `in`, ==,
// sorting or iteration visits, and per 64 bytes of string scanned or compared. Bytes: the
// cumulative size of every string, list and dict created (never given back, so repeating a big
// allocation in a loop runs out too). Both grow with the input variables (messages, tools), so
// that long conversations render whatever their size: +1 step and +4 bytes per input byte.
inline constexpr uint64_t kMaxRenderSteps = 10'000'000;
inline constexpr uint64_t kMaxRenderBytes = uint64_t{256} << 20;
inline constexpr uint64_t kRenderStepsPerInputByte = 1;
inline constexpr uint64_t kRenderBytesPerInputByte = 4;

enum class Kind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,
  kTuple,
  kDict,
  kNamespace,
  kLoop,
  kCallable
};

struct Value;
struct Dict;
struct Callable;
using List = std::vector<Value>;

// A Python object. Strings are immutable and shared; lists, dicts and namespaces are shared by
// reference like in Python (only namespaces are ever mutated: the sandbox forbids list.append).
struct Value {
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::shared_ptr<const std::string>
      s;                         // kString; for kUndefined the error hint ("'x' is undefined")
  std::shared_ptr<List> list;    // kList, kTuple
  std::shared_ptr<Dict> dict;    // kDict, kNamespace, kLoop
  std::shared_ptr<Callable> fn;  // kCallable

  static Value undefined(std::string hint);
  static Value none() { return Value{Kind::kNone}; }
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(List items = {});
  static Value make_tuple(List items);
  static Value make_dict();

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  bool is_sequence() const { return kind == Kind::kList || kind == Kind::kTuple; }
  bool is_mapping() const { return kind == Kind::kDict; }
  const std::string& str() const { return *s; }
};

// Insertion-ordered mapping (Python dicts keep insertion order; tojson must reproduce it).
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Argument `index` given by position or by `name`; nullptr if absent.
  const Value* get(size_t index, std::string_view name) const;
};

class Evaluator;
struct Callable {
  std::string name;
  std::function<Value(Evaluator&, CallArgs&)> call;
};

// Thrown by value operations and builtins; the evaluator adds origin:line:column.
struct EvalError {
  std::string message;
};
[[noreturn]] void eval_fail(std::string message);

// --- value semantics (jinja_value.cpp) ---------------------------------------------------------
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);
// Python's `<`; EvalError for unorderable types.
bool less(const Value& a, const Value& b);
std::string type_name(const Value& v);  // Python's type name: 'str', 'dict', ...
std::string to_str(const Value& v);     // Python str() (undefined -> "")
std::string to_repr(const Value& v);    // Python repr()
std::string float_repr(double d);
struct DumpOptions {
  bool pretty = false;  // indent given: newline + indent_str per level
  std::string indent_str;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool ensure_ascii = false;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const DumpOptions& opt);  // Python json.dumps
Value from_json(const json& j);
Value from_json(const ordered_json& j);
// Python len(); EvalError when there is none.
size_t length(const Value& v);
// Python iter(): strings give characters, dicts keys, undefined nothing.
List iterate(const Value& v);
void check_string_size(size_t n);

// The budget of the render running on this thread (jinja_value.cpp); no-ops outside a render.
// EvalError naming the budget when it is spent.
void charge_steps(uint64_t n);
void charge_bytes(uint64_t n);
// Fails as charge_bytes(n) would, without charging: for a value about to be built and charged.
void precheck_bytes(uint64_t n);
inline void charge_scan(size_t bytes) {
  charge_steps(1 + bytes / 64);
}
struct RenderBudget {
  uint64_t steps = 0, max_steps = kMaxRenderSteps;
  uint64_t bytes = 0, max_bytes = kMaxRenderBytes;
};
// Installs `b` as this thread's budget for its lifetime (renders may nest: the previous one is
// restored).
class BudgetScope {
 public:
  explicit BudgetScope(RenderBudget* b);
  ~BudgetScope();
  BudgetScope(const BudgetScope&) = delete;
  BudgetScope& operator=(const BudgetScope&) = delete;

 private:
  RenderBudget* saved_;
};
// The budget of the last render that ran on this thread, with what it used (for the fuzz target).
RenderBudget last_render_usage();
// What the input variables weigh, for the budget: string bytes plus sizeof(Value) per element.
uint64_t input_weight(const Value& v);
// Position of `needle` in `hay` at or after `from` (npos if absent), in linear time (glibc's
// two-way memmem; std::string::find is O(n*m) on adversarial input). Charged as a scan.
size_t find_sub(std::string_view hay, std::string_view needle, size_t from = 0);

// --- UTF-8 as Python code points (jinja_value.cpp) ---------------------------------------------
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t c);
bool py_isspace(char32_t c);

// --- AST (jinja_parser.cpp) ----------------------------------------------------------------------
struct Pos {
  uint32_t line = 1;
  uint32_t column = 1;
};

enum class NodeKind : uint8_t {
  // expressions
  kLiteral,
  kName,
  kList,
  kTuple,
  kDict,
  kUnary,
  kBinary,
  kCompare,
  kAnd,
  kOr,
  kNot,
  kCond,
  kGetAttr,
  kGetItem,
  kSlice,
  kCall,
  kFilter,
  kTest,
  // statements
  kText,
  kOutput,
  kIf,
  kFor,
  kSet,
  kSetBlock,
  kMacro,
  kCallBlock,
  kFilterBlock,
  kBreak,
  kContinue,
  kWith,
  kScope,
};

using FilterFn = Value (*)(Evaluator&, Value, CallArgs&);
using TestFn = bool (*)(Evaluator&, const Value&, CallArgs&);

struct Node;
using NodePtr = std::unique_ptr<Node>;
using NodeList = std::vector<NodePtr>;

struct Node {
  NodeKind kind;
  Pos pos;
  std::string name;  // identifier, operator, attribute, filter/test name, text
  Value literal;     // kLiteral
  NodeList args;     // operands / positional arguments (nullptr = omitted slice part)
  std::vector<std::pair<std::string, NodePtr>> kwargs;
  std::vector<std::string> ops;  // kCompare operators; kFor/kSet/kMacro target or parameter names
  bool flag = false;             // kTest: negated; kFor/kSet: tuple target
  NodeList body, else_body;      // statements
  FilterFn filter = nullptr;     // kFilter: resolved at parse time
  TestFn test = nullptr;         // kTest: resolved at parse time
};

struct Template {
  std::string origin;
  NodeList body;
};

// Tokenizes and parses `source`; kFormat "<origin>:<line>:<column>: ..." on syntax errors and
// on unknown statements, filters and tests.
std::unique_ptr<Template> parse_template(const std::string& source, const std::string& origin);

// --- builtins (jinja_builtins.cpp) -------------------------------------------------------------
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
// Attribute of a non-namespace value: methods of str/dict/list, then dict keys; undefined if none.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value make_global(std::string_view name);  // range, namespace, dict, raise_exception, ...

// --- evaluation (jinja_eval.cpp) ---------------------------------------------------------------
std::string render(const Template& t, const Value& context);
// Calls a callable value (macro, method, global) from a builtin, e.g. the `map` filter.
Value call_value(Evaluator& ev, const Value& fn, CallArgs& args);
void count_iterations(Evaluator& ev, uint64_t n);

}  // namespace nnpipe::jinja
