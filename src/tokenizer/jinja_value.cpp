// Python object semantics for the chat-template interpreter: truthiness, ==, <, str(), repr(),
// json.dumps and len()/iter(), matched to CPython so that rendered text is byte-identical.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace nnpipe::jinja {

void eval_fail(std::string message) {
  throw EvalError{std::move(message)};
}

namespace {
thread_local RenderBudget* t_budget = nullptr;
thread_local RenderBudget t_last;
}  // namespace

BudgetScope::BudgetScope(RenderBudget* b) : saved_(t_budget) {
  t_budget = b;
}
BudgetScope::~BudgetScope() {
  if (t_budget) t_last = *t_budget;
  t_budget = saved_;
}
RenderBudget last_render_usage() {
  return t_last;
}

void charge_steps(uint64_t n) {
  RenderBudget* b = t_budget;
  if (!b) return;
  b->steps += n;
  if (b->steps > b->max_steps)
    eval_fail(fmt::format(
        "render budget exhausted: more than {} evaluation steps (the template computes too much)",
        b->max_steps));
}

namespace {
[[noreturn]] void bytes_exhausted(const RenderBudget& b) {
  eval_fail(fmt::format(
      "render budget exhausted: more than {} bytes of strings and lists created (the template "
      "allocates too much)",
      b.max_bytes));
}
}  // namespace

void charge_bytes(uint64_t n) {
  RenderBudget* b = t_budget;
  if (!b) return;
  b->bytes += n;
  if (b->bytes > b->max_bytes) bytes_exhausted(*b);
}

void precheck_bytes(uint64_t n) {
  RenderBudget* b = t_budget;
  if (b && b->bytes + n > b->max_bytes) bytes_exhausted(*b);
}

uint64_t input_weight(const Value& v) {
  std::vector<const Value*> todo{&v};  // iterative: the input may nest deeply
  uint64_t w = 0;
  while (!todo.empty()) {
    const Value* x = todo.back();
    todo.pop_back();
    w += sizeof(Value);
    if (x->kind == Kind::kString) w += x->s->size();
    if (x->list)
      for (auto& e : *x->list) todo.push_back(&e);
    if (x->dict)
      for (auto& [k, e] : x->dict->items) {
        todo.push_back(&k);
        todo.push_back(&e);
      }
  }
  return w;
}

size_t find_sub(std::string_view hay, std::string_view needle, size_t from) {
  if (from > hay.size()) return std::string::npos;
  if (needle.empty()) return from;
  const void* p = memmem(hay.data() + from, hay.size() - from, needle.data(), needle.size());
  size_t at = p ? static_cast<size_t>(static_cast<const char*>(p) - hay.data()) : hay.size();
  charge_scan(at - from + needle.size());  // what the search read, so split/replace stay linear
  return p ? at : std::string::npos;
}

Value Value::undefined(std::string hint) {
  Value v;
  v.s = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::boolean(bool x) {
  Value v{Kind::kBool};
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v{Kind::kInt};
  v.i = x;
  return v;
}
Value Value::number(double x) {
  Value v{Kind::kFloat};
  v.f = x;
  return v;
}
Value Value::string(std::string x) {
  charge_bytes(x.size() + sizeof(std::string));
  Value v{Kind::kString};
  v.s = std::make_shared<const std::string>(std::move(x));
  return v;
}
Value Value::make_list(List items) {
  charge_bytes((items.size() + 1) * sizeof(Value));
  Value v{Kind::kList};
  v.list = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::make_tuple(List items) {
  charge_bytes((items.size() + 1) * sizeof(Value));
  Value v{Kind::kTuple};
  v.list = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::make_dict() {
  charge_bytes(sizeof(Dict));
  Value v{Kind::kDict};
  v.dict = std::make_shared<Dict>();
  return v;
}

const Value* Dict::find(const Value& key) const {
  charge_steps(items.size());
  for (auto& [k, v] : items)
    if (equals(k, key)) return &v;
  return nullptr;
}
const Value* Dict::find(std::string_view key) const {
  charge_steps(items.size());
  for (auto& [k, v] : items)
    if (k.kind == Kind::kString && k.str() == key) return &v;
  return nullptr;
}
void Dict::set(Value key, Value value) {
  charge_steps(items.size());
  for (auto& [k, v] : items)
    if (equals(k, key)) {
      v = std::move(value);
      return;
    }
  charge_bytes(2 * sizeof(Value));
  items.emplace_back(std::move(key), std::move(value));
}

const Value* CallArgs::get(size_t index, std::string_view name) const {
  if (index < pos.size()) return &pos[index];
  for (auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}

void check_string_size(size_t n) {
  if (n > kMaxStringBytes) eval_fail(fmt::format("string longer than {} bytes", kMaxStringBytes));
}

// --- UTF-8 ---------------------------------------------------------------------------------------

std::u32string utf8_decode(std::string_view s) {
  charge_bytes(4 * s.size());
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t c;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &c);
    if (n <= 0) {  // invalid byte: Python strings cannot hold one, so keep going with U+FFFD
      c = 0xFFFD;
      n = 1;
    }
    out.push_back(static_cast<char32_t>(c));
    p += n;
    left -= n;
  }
  return out;
}

void utf8_append(std::string& out, char32_t c) {
  utf8proc_uint8_t buf[4];
  utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buf);
  if (n <= 0) n = utf8proc_encode_char(0xFFFD, buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// --- truthiness, equality, ordering --------------------------------------------------------------

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.b;
    case Kind::kInt:
      return v.i != 0;
    case Kind::kFloat:
      return v.f != 0;
    case Kind::kString:
      return !v.s->empty();
    case Kind::kList:
    case Kind::kTuple:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->items.empty();
    default:
      return true;
  }
}

static double as_double(const Value& v) {
  return v.kind == Kind::kFloat ? v.f
         : v.kind == Kind::kInt ? static_cast<double>(v.i)
         : v.b                  ? 1.0
                                : 0.0;
}
static int64_t as_int(const Value& v) {
  return v.kind == Kind::kInt ? v.i : v.b ? 1 : 0;
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::kFloat || b.kind == Kind::kFloat) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      if (a.s == b.s) return true;
      if (a.s->size() == b.s->size()) charge_scan(a.s->size());
      return *a.s == *b.s;
    case Kind::kList:
    case Kind::kTuple: {
      if (a.list->size() != b.list->size()) return false;
      charge_steps(a.list->size());
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Kind::kDict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    case Kind::kNamespace:
    case Kind::kLoop:
      return a.dict == b.dict;
    case Kind::kCallable:
      return a.fn == b.fn;
    default:
      return false;
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::kFloat || b.kind == Kind::kFloat) return as_double(a) < as_double(b);
    return as_int(a) < as_int(b);
  }
  if (a.kind == Kind::kString && b.kind == Kind::kString) {
    charge_scan(std::min(a.s->size(), b.s->size()));
    return *a.s < *b.s;  // UTF-8 = code point order
  }
  if (a.kind == b.kind && a.is_sequence()) {
    const List &x = *a.list, &y = *b.list;
    charge_steps(std::min(x.size(), y.size()));
    for (size_t k = 0; k < x.size() && k < y.size(); ++k)
      if (!equals(x[k], y[k])) return less(x[k], y[k]);
    return x.size() < y.size();
  }
  eval_fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a),
                        type_name(b)));
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
    case Kind::kLoop:
      return "LoopContext";
    case Kind::kCallable:
      return "function";
  }
  return "object";
}

// --- str() / repr() ------------------------------------------------------------------------------

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, then CPython's repr layout: fixed for 1e-4 <= |d| < 1e16, else
  // scientific with a two-digit exponent; fixed always shows a fractional part ("1.0").
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  size_t epos = sci.find('e');
  int exp = std::stoi(sci.substr(epos + 1));
  std::string mant = sci.substr(0, epos);
  bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    std::string e = std::to_string(std::abs(exp));
    if (e.size() < 2) e = "0" + e;
    return out + e;
  }
  int decpt = exp + 1;  // digits before the decimal point
  if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (static_cast<size_t>(decpt) >= digits.size()) {
    out += digits + std::string(static_cast<size_t>(decpt) - digits.size(), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." +
           digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

static bool py_isprintable(char32_t c) {
  if (c == ' ') return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
      return false;
    default:
      return true;
  }
}

static std::string string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos,
       has_double = s.find('"') != std::string::npos;
  char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : utf8_decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
    } else if (c < 0x7f || py_isprintable(c)) {
      utf8_append(out, c);
    } else if (c <= 0xff) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(c));
    } else if (c <= 0xffff) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<unsigned>(c));
    }
  }
  out += q;
  return out;
}

static void repr_into(std::string& out, const Value& v, int depth);

static void dict_repr_into(std::string& out, const Dict& d, int depth) {
  out += '{';
  bool first = true;
  for (auto& [k, val] : d.items) {
    if (!first) out += ", ";
    first = false;
    repr_into(out, k, depth + 1);
    out += ": ";
    repr_into(out, val, depth + 1);
  }
  out += '}';
}

static void repr_into(std::string& out, const Value& v, int depth) {
  if (depth > kMaxValueDepth) eval_fail("value nested too deeply to print");
  check_string_size(out.size());
  charge_steps(1);
  switch (v.kind) {
    case Kind::kUndefined:
      out += "Undefined";
      break;
    case Kind::kNone:
      out += "None";
      break;
    case Kind::kBool:
      out += v.b ? "True" : "False";
      break;
    case Kind::kInt:
      out += std::to_string(v.i);
      break;
    case Kind::kFloat:
      out += float_repr(v.f);
      break;
    case Kind::kString:
      out += string_repr(*v.s);
      break;
    case Kind::kList:
    case Kind::kTuple: {
      out += v.kind == Kind::kList ? '[' : '(';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        repr_into(out, (*v.list)[k], depth + 1);
      }
      if (v.kind == Kind::kTuple && v.list->size() == 1) out += ',';
      out += v.kind == Kind::kList ? ']' : ')';
      break;
    }
    case Kind::kDict:
      dict_repr_into(out, *v.dict, depth);
      break;
    case Kind::kNamespace:
      out += "<Namespace ";
      dict_repr_into(out, *v.dict, depth);
      out += '>';
      break;
    case Kind::kLoop: {
      const Value* index = v.dict->find("index");
      const Value* len = v.dict->find("length");
      out += fmt::format("<LoopContext {}/{}>", index ? to_str(*index) : "?",
                         len ? to_str(*len) : "?");
      break;
    }
    case Kind::kCallable:
      out += fmt::format("<function {}>", v.fn->name);
      break;
  }
}

std::string to_repr(const Value& v) {
  std::string out;
  repr_into(out, v, 0);
  return out;
}

std::string to_str(const Value& v) {
  if (v.kind == Kind::kString) return *v.s;
  if (v.kind == Kind::kUndefined) return "";
  return to_repr(v);
}

// --- json.dumps ----------------------------------------------------------------------------------

static void json_string_into(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : utf8_decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c > 0x7e)) {
          if (c > 0xffff) {  // surrogate pair, as json.dumps writes it
            char32_t u = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xd800 + (u >> 10), 0xdc00 + (u & 0x3ff));
          } else {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
          }
        } else {
          utf8_append(out, c);
        }
    }
  }
  out += '"';
}

static std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return float_repr(d);
}

static void json_into(std::string& out, const Value& v, const DumpOptions& opt, int depth) {
  if (depth > kMaxValueDepth) eval_fail("value nested too deeply for tojson");
  check_string_size(out.size());
  charge_steps(1);
  auto newline = [&](int level) {
    if (!opt.pretty) return;
    out += '\n';
    for (int k = 0; k < level; ++k) out += opt.indent_str;
  };
  switch (v.kind) {
    case Kind::kNone:
      out += "null";
      break;
    case Kind::kBool:
      out += v.b ? "true" : "false";
      break;
    case Kind::kInt:
      out += std::to_string(v.i);
      break;
    case Kind::kFloat:
      out += json_float(v.f);
      break;
    case Kind::kString:
      json_string_into(out, *v.s, opt.ensure_ascii);
      break;
    case Kind::kList:
    case Kind::kTuple: {
      if (v.list->empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += opt.item_sep;
        newline(depth + 1);
        json_into(out, (*v.list)[k], opt, depth + 1);
      }
      newline(depth);
      out += ']';
      break;
    }
    case Kind::kDict: {
      if (v.dict->items.empty()) {
        out += "{}";
        break;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (auto& kv : v.dict->items) items.push_back(&kv);
      if (opt.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return less(a->first, b->first); });
      out += '{';
      bool first = true;
      for (auto* kv : items) {
        if (!first) out += opt.item_sep;
        first = false;
        newline(depth + 1);
        const Value& k = kv->first;
        switch (k.kind) {
          case Kind::kString:
            json_string_into(out, *k.s, opt.ensure_ascii);
            break;
          case Kind::kInt:
            out += '"' + std::to_string(k.i) + '"';
            break;
          case Kind::kFloat:
            out += '"' + json_float(k.f) + '"';
            break;
          case Kind::kBool:
            out += k.b ? "\"true\"" : "\"false\"";
            break;
          case Kind::kNone:
            out += "\"null\"";
            break;
          default:
            eval_fail(
                fmt::format("keys must be str, int, float, bool or None, not {}", type_name(k)));
        }
        out += opt.key_sep;
        json_into(out, kv->second, opt, depth + 1);
      }
      newline(depth);
      out += '}';
      break;
    }
    default:
      eval_fail(fmt::format("Object of type {} is not JSON serializable", type_name(v)));
  }
}

std::string to_json(const Value& v, const DumpOptions& opt) {
  std::string out;
  json_into(out, v, opt, 0);
  return out;
}

// --- JSON input ----------------------------------------------------------------------------------

template <typename J>
static Value from_json_impl(const J& j, int depth) {
  if (depth > kMaxValueDepth)
    fail(ErrorCode::kFormat, "chat template context nested more than {} deep", kMaxValueDepth);
  switch (j.type()) {
    case J::value_t::null:
      return Value::none();
    case J::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case J::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case J::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX))
        fail(ErrorCode::kUnsupported, "chat template context: integer {} is larger than 64 bits",
             u);
      return Value::integer(static_cast<int64_t>(u));
    }
    case J::value_t::number_float:
      return Value::number(j.template get<double>());
    case J::value_t::string:
      return Value::string(j.template get<std::string>());
    case J::value_t::array: {
      List items;
      items.reserve(j.size());
      for (auto& e : j) items.push_back(from_json_impl(e, depth + 1));
      return Value::make_list(std::move(items));
    }
    case J::value_t::object: {
      Value d = Value::make_dict();
      for (auto it = j.begin(); it != j.end(); ++it)
        d.dict->items.emplace_back(Value::string(it.key()), from_json_impl(it.value(), depth + 1));
      return d;
    }
    default:
      fail(ErrorCode::kFormat, "chat template context: unsupported JSON value ({})", j.type_name());
  }
}

Value from_json(const json& j) {
  return from_json_impl(j, 0);
}
Value from_json(const ordered_json& j) {
  return from_json_impl(j, 0);
}

// --- len() / iter() ------------------------------------------------------------------------------

size_t length(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return 0;
    case Kind::kString: {
      charge_scan(v.s->size());
      size_t n = 0;
      for (char c : *v.s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
      return n;
    }
    case Kind::kList:
    case Kind::kTuple:
      return v.list->size();
    case Kind::kDict:
      return v.dict->items.size();
    default:
      eval_fail(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

List iterate(const Value& v) {
  if (v.list) {
    charge_steps(v.list->size());
    charge_bytes(v.list->size() * sizeof(Value));
  } else if (v.dict) {
    charge_steps(v.dict->items.size());
    charge_bytes(v.dict->items.size() * sizeof(Value));
  }
  switch (v.kind) {
    case Kind::kUndefined:
      return {};
    case Kind::kString: {
      List out;
      for (char32_t c : utf8_decode(*v.s))
        out.push_back(Value::string(utf8_encode(std::u32string(1, c))));
      return out;
    }
    case Kind::kList:
    case Kind::kTuple:
      return *v.list;
    case Kind::kDict: {
      List out;
      for (auto& kv : v.dict->items) out.push_back(kv.first);
      return out;
    }
    default:
      eval_fail(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

}  // namespace nnpipe::jinja
