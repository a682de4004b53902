// jinja2's filters, tests and globals, and the Python str/dict/list methods templates call, as
// the ImmutableSandboxedEnvironment transformers uses exposes them (mutating methods are unsafe
// there, so they are undefined here too).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <unordered_map>

#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace nnpipe::jinja {
namespace {

// --- small helpers -------------------------------------------------------------------------------

const Value* arg(const CallArgs& a, size_t index, std::string_view name) {
  return a.get(index, name);
}
bool arg_bool(const CallArgs& a, size_t index, std::string_view name, bool dflt) {
  const Value* v = a.get(index, name);
  return v ? truthy(*v) : dflt;
}
std::string arg_str(const CallArgs& a, size_t index, std::string_view name, std::string dflt) {
  const Value* v = a.get(index, name);
  return v ? to_str(*v) : dflt;
}
int64_t to_index(const Value& v, const char* what) {
  if (v.kind == Kind::kInt) return v.i;
  if (v.kind == Kind::kBool) return v.b;
  eval_fail(fmt::format("{} must be an integer, not {}", what, type_name(v)));
}
const std::string& need_str(const Value& v, const char* what) {
  if (v.kind != Kind::kString) eval_fail(fmt::format("{} must be str, not {}", what, type_name(v)));
  return v.str();
}

Value make_fn(std::string name, std::function<Value(Evaluator&, CallArgs&)> f) {
  Value v{Kind::kCallable};
  v.fn = std::make_shared<Callable>(Callable{std::move(name), std::move(f)});
  return v;
}

char32_t upper_cp(char32_t c) {
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}
char32_t lower_cp(char32_t c) {
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}
char32_t title_cp(char32_t c) {
  return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}
bool is_cased(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

std::string map_chars(const std::string& s, char32_t (*f)(char32_t)) {
  std::u32string u = utf8_decode(s);
  for (auto& c : u) c = f(c);
  return utf8_encode(u);
}
std::string py_upper(const std::string& s) {
  return map_chars(s, upper_cp);
}
std::string py_lower(const std::string& s) {
  return map_chars(s, lower_cp);
}

std::string py_title(const std::string& s) {  // str.title(): words are runs of cased letters
  std::u32string u = utf8_decode(s);
  bool prev_cased = false;
  for (auto& c : u) {
    bool cased = is_cased(c);
    c = cased ? (prev_cased ? lower_cp(c) : title_cp(c)) : c;
    prev_cased = cased;
  }
  return utf8_encode(u);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (size_t k = 0; k < u.size(); ++k) u[k] = k == 0 ? title_cp(u[k]) : lower_cp(u[k]);
  return utf8_encode(u);
}

// str.strip([chars]); which: 1 = left, 2 = right, 3 = both.
std::string py_strip(const std::string& s, const Value* chars, int which) {
  std::u32string u = utf8_decode(s);
  std::u32string set;
  bool ws = !chars || chars->kind == Kind::kNone || chars->is_undefined();
  if (!ws) set = utf8_decode(need_str(*chars, "strip arg"));
  auto strip_it = [&](char32_t c) {
    if (ws) return py_isspace(c);
    charge_scan(4 * set.size());
    return set.find(c) != std::u32string::npos;
  };
  size_t a = 0, b = u.size();
  if (which & 1)
    while (a < b && strip_it(u[a])) ++a;
  if (which & 2)
    while (b > a && strip_it(u[b - 1])) --b;
  return utf8_encode(std::u32string_view(u).substr(a, b - a));
}

// Reversed copies, so that searching from the right is a linear forward search too.
struct Reversed {
  Reversed(std::string_view s, std::string_view sub)
      : hay(s.rbegin(), s.rend()), needle(sub.rbegin(), sub.rend()) {
    charge_bytes(s.size() + sub.size());
  }
  // Start of the rightmost occurrence of the needle that ends at or before `end` in the original.
  size_t rfind(size_t end) const {
    size_t f = find_sub(hay, needle, hay.size() - end);
    return f == std::string::npos ? f : hay.size() - f - needle.size();
  }
  std::string hay, needle;
};

List py_split(const std::string& s, const Value* sep_v, int64_t maxsplit, bool from_right) {
  List out;
  if (!sep_v || sep_v->kind == Kind::kNone) {  // runs of whitespace, no empty strings
    std::u32string u = utf8_decode(s);
    std::vector<std::u32string> parts;
    if (!from_right) {
      size_t k = 0;
      while (k < u.size()) {
        while (k < u.size() && py_isspace(u[k])) ++k;
        if (k >= u.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          size_t e = u.size();
          while (e > k && py_isspace(u[e - 1])) --e;
          parts.push_back(u.substr(k, e - k));
          break;
        }
        size_t e = k;
        while (e < u.size() && !py_isspace(u[e])) ++e;
        parts.push_back(u.substr(k, e - k));
        k = e;
      }
    } else {
      size_t k = u.size();
      while (k > 0) {
        while (k > 0 && py_isspace(u[k - 1])) --k;
        if (k == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          size_t b = 0;
          while (b < k && py_isspace(u[b])) ++b;
          parts.push_back(u.substr(b, k - b));
          break;
        }
        size_t b = k;
        while (b > 0 && !py_isspace(u[b - 1])) --b;
        parts.push_back(u.substr(b, k - b));
        k = b;
      }
      std::reverse(parts.begin(), parts.end());
    }
    for (auto& p : parts) out.push_back(Value::string(utf8_encode(p)));
    return out;
  }
  const std::string& sep = need_str(*sep_v, "separator");
  if (sep.empty()) eval_fail("empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t k = 0;
    while (true) {
      size_t f = maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit
                     ? std::string::npos
                     : find_sub(s, sep, k);
      if (f == std::string::npos) {
        parts.push_back(s.substr(k));
        break;
      }
      parts.push_back(s.substr(k, f - k));
      k = f + sep.size();
    }
  } else {
    size_t end = s.size();
    Reversed rev(s, sep);
    while (true) {
      size_t f = std::string::npos;
      if (!(maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) && end >= sep.size())
        f = rev.rfind(end);
      if (f == std::string::npos) {
        parts.push_back(s.substr(0, end));
        break;
      }
      parts.push_back(s.substr(f + sep.size(), end - f - sep.size()));
      end = f;
    }
    std::reverse(parts.begin(), parts.end());
  }
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& rep,
                       int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `rep` between every character
    std::u32string u = utf8_decode(s);
    int64_t done = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || done < count) {
        out += rep;
        ++done;
      }
      if (k < u.size()) utf8_append(out, u[k]);
      check_string_size(out.size());
    }
    return out;
  }
  size_t k = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = find_sub(s, old, k);
    if (f == std::string::npos) break;
    out.append(s, k, f - k);
    out += rep;
    check_string_size(out.size());
    k = f + old.size();
    ++done;
  }
  out.append(s, k);
  return out;
}

// Python's str.splitlines() boundaries.
std::vector<std::u32string> py_splitlines(const std::u32string& u) {
  std::vector<std::u32string> lines;
  size_t start = 0;
  for (size_t k = 0; k < u.size(); ++k) {
    char32_t c = u[k];
    bool nl = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d ||
              c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!nl) continue;
    lines.push_back(u.substr(start, k - start));
    if (c == '\r' && k + 1 < u.size() && u[k + 1] == '\n') ++k;
    start = k + 1;
  }
  if (start < u.size()) lines.push_back(u.substr(start));
  return lines;
}

// Converts to the sort/unique key: attribute lookup, then lower-casing strings.
Value attr_path(const Value& v, const Value* attribute);
Value sort_key(const Value& v, const Value* attribute, bool case_sensitive) {
  Value k = attribute ? attr_path(v, attribute) : v;
  if (!case_sensitive && k.kind == Kind::kString) return Value::string(py_lower(k.str()));
  return k;
}

// jinja2's make_attrgetter: "a.b.0" -> getitem for each part (integers for digit parts).
Value attr_path(const Value& v, const Value* attribute) {
  if (!attribute || attribute->kind == Kind::kNone) return v;
  std::vector<Value> parts;
  if (attribute->kind == Kind::kString) {
    const std::string& s = attribute->str();
    size_t k = 0;
    while (true) {
      size_t e = s.find('.', k);
      std::string part = s.substr(k, e == std::string::npos ? std::string::npos : e - k);
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                 [](char c) { return c >= '0' && c <= '9'; });
      parts.push_back(digits && part.size() < 18 ? Value::integer(std::stoll(part))
                                                 : Value::string(part));
      if (e == std::string::npos) break;
      k = e + 1;
    }
  } else {
    parts.push_back(*attribute);
  }
  Value cur = v;
  for (auto& p : parts) {
    if (cur.is_undefined()) eval_fail(cur.s ? *cur.s : "undefined");
    if (cur.kind == Kind::kNamespace || cur.kind == Kind::kLoop) {
      const Value* x = cur.dict->find(p);
      cur = x ? *x : Value::undefined(fmt::format("no attribute {}", to_repr(p)));
    } else {
      cur = get_item(cur, p);
    }
  }
  return cur;
}

// --- filters -------------------------------------------------------------------------------------

Value f_abs(Evaluator&, Value v, CallArgs&) {
  if (v.kind == Kind::kFloat) return Value::number(std::fabs(v.f));
  if (v.kind == Kind::kInt || v.kind == Kind::kBool) {
    int64_t x = v.kind == Kind::kInt ? v.i : v.b;
    if (x == INT64_MIN) eval_fail("integer overflow");
    return Value::integer(x < 0 ? -x : x);
  }
  eval_fail(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
}

Value f_batch(Evaluator&, Value v, CallArgs& a) {
  const Value* n = arg(a, 0, "linecount");
  if (!n) eval_fail("batch() missing argument 'linecount'");
  int64_t size = to_index(*n, "linecount");
  if (size <= 0) eval_fail("batch size must be positive");
  const Value* fill = arg(a, 1, "fill_with");
  List items = iterate(v), out, cur;
  for (auto& x : items) {
    cur.push_back(x);
    if (static_cast<int64_t>(cur.size()) == size) {
      out.push_back(Value::make_list(std::move(cur)));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    if (fill && fill->kind != Kind::kNone)
      while (static_cast<int64_t>(cur.size()) < size) cur.push_back(*fill);
    out.push_back(Value::make_list(std::move(cur)));
  }
  return Value::make_list(std::move(out));
}

Value f_capitalize(Evaluator&, Value v, CallArgs&) {
  return Value::string(py_capitalize(to_str(v)));
}
Value f_length(Evaluator&, Value v, CallArgs&) {
  return Value::integer(static_cast<int64_t>(length(v)));
}

Value f_default(Evaluator&, Value v, CallArgs& a) {
  bool boolean = arg_bool(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !truthy(v))) {
    const Value* d = arg(a, 0, "default_value");
    return d ? *d : Value::string("");
  }
  return v;
}

Value f_dictsort(Evaluator&, Value v, CallArgs& a) {
  if (v.kind != Kind::kDict)
    eval_fail(fmt::format("dictsort expects a mapping, got {}", type_name(v)));
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  std::string by = arg_str(a, 1, "by", "key");
  bool reverse = arg_bool(a, 2, "reverse", false);
  if (by != "key" && by != "value") eval_fail("You can only sort by either 'key' or 'value'");
  size_t pos = by == "key" ? 0 : 1;
  List items;
  for (auto& [k, x] : v.dict->items) items.push_back(Value::make_tuple({k, x}));
  auto key = [&](const Value& t) { return sort_key((*t.list)[pos], nullptr, cs); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    return reverse ? less(key(y), key(x)) : less(key(x), key(y));
  });
  return Value::make_list(std::move(items));
}

Value f_escape(Evaluator&, Value v, CallArgs&) {
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return Value::string(std::move(out));
}

Value f_first(Evaluator&, Value v, CallArgs&) {
  List items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}
Value f_last(Evaluator&, Value v, CallArgs&) {
  List items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

// Python float(str): surrounding whitespace, underscores between digits, inf/nan.
bool parse_py_float(std::string s, double& out) {
  s = py_strip(s, nullptr, 3);
  std::string clean;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '_') {
      if (k == 0 || k + 1 >= s.size() || !isdigit(static_cast<unsigned char>(s[k - 1])) ||
          !isdigit(static_cast<unsigned char>(s[k + 1])))
        return false;
      continue;
    }
    clean += s[k];
  }
  if (clean.empty()) return false;
  std::string low = py_lower(clean);
  std::string body = low[0] == '+' || low[0] == '-' ? low.substr(1) : low;
  if (body == "inf" || body == "infinity" || body == "nan") {
    out = body == "nan" ? NAN : (low[0] == '-' ? -INFINITY : INFINITY);
    return true;
  }
  for (char c : body)
    if (!(isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-'))
      return false;
  char* end = nullptr;
  out = std::strtod(clean.c_str(), &end);
  return end && *end == 0;
}

Value f_float(Evaluator&, Value v, CallArgs& a) {
  const Value* d = arg(a, 0, "default");
  Value dflt = d ? *d : Value::number(0.0);
  if (v.kind == Kind::kFloat) return v;
  if (v.kind == Kind::kInt || v.kind == Kind::kBool)
    return Value::number(static_cast<double>(v.kind == Kind::kInt ? v.i : v.b));
  double x;
  if (v.kind == Kind::kString && parse_py_float(v.str(), x)) return Value::number(x);
  return dflt;
}

Value f_int(Evaluator&, Value v, CallArgs& a) {
  const Value* d = arg(a, 0, "default");
  Value dflt = d ? *d : Value::integer(0);
  int64_t base = 10;
  if (const Value* b = arg(a, 1, "base")) base = to_index(*b, "base");
  if (v.kind == Kind::kInt) return v;
  if (v.kind == Kind::kBool) return Value::integer(v.b);
  if (v.kind == Kind::kFloat) {
    if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.2e18) return dflt;
    return Value::integer(static_cast<int64_t>(v.f));
  }
  if (v.kind != Kind::kString) return dflt;
  std::string s = py_strip(v.str(), nullptr, 3);
  std::string clean;
  for (char c : s)
    if (c != '_') clean += c;
  if (!clean.empty() && base >= 2 && base <= 36) {
    errno = 0;
    char* end = nullptr;
    long long x = std::strtoll(clean.c_str(), &end, static_cast<int>(base));
    bool hex_prefix =
        base == 16 && clean.find('x') != std::string::npos;  // Python int("0x1", 16) is fine too
    if (end && *end == 0 && errno == 0 &&
        (hex_prefix || clean.find_first_of("xX") == std::string::npos))
      return Value::integer(x);
  }
  double f;  // jinja2 falls back to int(float(value))
  if (base == 10 && parse_py_float(v.str(), f) && std::isfinite(f) && std::fabs(f) < 9.2e18)
    return Value::integer(static_cast<int64_t>(f));
  return dflt;
}

Value f_indent(Evaluator&, Value v, CallArgs& a) {
  std::string ind = "    ";
  if (const Value* w = arg(a, 0, "width"))
    ind = w->kind == Kind::kString
              ? w->str()
              : std::string(static_cast<size_t>(std::max<int64_t>(0, to_index(*w, "width"))), ' ');
  bool first = arg_bool(a, 1, "first", false), blank = arg_bool(a, 2, "blank", false);
  std::u32string s = utf8_decode(to_str(v) + "\n");  // jinja2's trick for splitlines
  std::vector<std::u32string> lines = py_splitlines(s);
  std::u32string uind = utf8_decode(ind), rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) rv += U"\n" + uind;
      rv += lines[k];
    }
  } else {
    rv = lines.empty() ? U"" : lines[0];
    if (lines.size() > 1) {
      rv += U"\n";
      for (size_t k = 1; k < lines.size(); ++k) {
        if (k > 1) rv += U"\n";
        rv += lines[k].empty() ? lines[k] : uind + lines[k];
      }
    }
  }
  if (first) rv = uind + rv;
  std::string out = utf8_encode(rv);
  check_string_size(out.size());
  return Value::string(std::move(out));
}

Value f_items(Evaluator&, Value v, CallArgs&) {
  if (v.is_undefined()) return Value::make_list();
  if (v.kind != Kind::kDict)
    eval_fail(fmt::format("Can only get item pairs from a mapping, got {}", type_name(v)));
  List out;
  for (auto& [k, x] : v.dict->items) out.push_back(Value::make_tuple({k, x}));
  return Value::make_list(std::move(out));
}

Value f_join(Evaluator&, Value v, CallArgs& a) {
  std::string sep = arg_str(a, 0, "d", "");
  const Value* attribute = arg(a, 1, "attribute");
  std::string out;
  bool first = true;
  for (auto& x : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(attribute ? attr_path(x, attribute) : x);
    check_string_size(out.size());
  }
  return Value::string(std::move(out));
}

Value f_list(Evaluator&, Value v, CallArgs&) {
  return Value::make_list(iterate(v));
}
Value f_lower(Evaluator&, Value v, CallArgs&) {
  return Value::string(py_lower(to_str(v)));
}
Value f_upper(Evaluator&, Value v, CallArgs&) {
  return Value::string(py_upper(to_str(v)));
}

Value f_map(Evaluator& ev, Value v, CallArgs& a) {
  List items = iterate(v), out;
  if (const Value* attribute = arg(a, a.pos.empty() ? 0 : 99, "attribute")) {
    const Value* dflt = nullptr;
    for (auto& [k, x] : a.kw)
      if (k == "default") dflt = &x;
    for (auto& x : items) {
      Value r = attr_path(x, attribute);
      out.push_back(r.is_undefined() && dflt ? *dflt : r);
    }
    return Value::make_list(std::move(out));
  }
  if (a.pos.empty()) eval_fail("map requires a filter argument");
  std::string name = need_str(a.pos[0], "map filter name");
  FilterFn f = find_filter(name);
  if (!f) eval_fail(fmt::format("unknown filter '{}'", name));
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (auto& x : items) {
    CallArgs copy = rest;
    out.push_back(f(ev, x, copy));
  }
  return Value::make_list(std::move(out));
}

Value minmax(Value v, CallArgs& a, bool want_max) {
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List items = iterate(v);
  if (items.empty())
    return Value::undefined(want_max ? "No aggregated item, sequence was empty."
                                     : "No aggregated item, sequence was empty.");
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    Value kb = sort_key(items[best], attribute, cs), kk = sort_key(items[k], attribute, cs);
    if (want_max ? less(kb, kk) : less(kk, kb)) best = k;
  }
  return items[best];
}
Value f_max(Evaluator&, Value v, CallArgs& a) {
  return minmax(std::move(v), a, true);
}
Value f_min(Evaluator&, Value v, CallArgs& a) {
  return minmax(std::move(v), a, false);
}

Value f_replace(Evaluator&, Value v, CallArgs& a) {
  const Value* old = arg(a, 0, "old");
  const Value* rep = arg(a, 1, "new");
  if (!old || !rep) eval_fail("replace() needs 'old' and 'new'");
  int64_t count = -1;
  if (const Value* c = arg(a, 2, "count"); c && c->kind != Kind::kNone)
    count = to_index(*c, "count");
  return Value::string(py_replace(to_str(v), to_str(*old), to_str(*rep), count));
}

Value f_reverse(Evaluator&, Value v, CallArgs&) {
  if (v.kind == Kind::kString) {
    std::u32string u = utf8_decode(v.str());
    std::reverse(u.begin(), u.end());
    return Value::string(utf8_encode(u));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::make_list(std::move(items));
}

Value f_round(Evaluator&, Value v, CallArgs& a) {
  int64_t precision = 0;
  if (const Value* p = arg(a, 0, "precision")) precision = to_index(*p, "precision");
  std::string method = arg_str(a, 1, "method", "common");
  if (method != "common" && method != "ceil" && method != "floor")
    eval_fail("method must be common, ceil or floor");
  if (!v.is_number())
    eval_fail(fmt::format("type {} doesn't define __round__ method", type_name(v)));
  if (method == "common" && v.kind != Kind::kFloat)
    return Value::integer(v.kind == Kind::kInt ? v.i : v.b);
  double x = v.kind == Kind::kFloat ? v.f : static_cast<double>(v.kind == Kind::kInt ? v.i : v.b);
  if (method != "common") {
    double scale = std::pow(10.0, static_cast<double>(precision));
    double r = method == "ceil" ? std::ceil(x * scale) : std::floor(x * scale);
    return Value::number(r / scale);
  }
  if (!std::isfinite(x)) return Value::number(x);
  if (precision == 0) return Value::number(std::nearbyint(x));  // ties to even, like Python's round
  if (precision > 0 && precision <= 300) {
    // Python rounds the exact binary value correctly; printf does the same.
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);
    return Value::number(std::strtod(buf, nullptr));
  }
  if (precision > 300) return Value::number(x);
  double scale = std::pow(10.0, static_cast<double>(-precision));
  return Value::number(std::nearbyint(x / scale) * scale);
}

Value f_safe(Evaluator&, Value v, CallArgs&) {
  return Value::string(to_str(v));
}

// select/reject and selectattr/rejectattr share this: `attr` applies a path first; no test name
// means truthiness.
Value select_impl(Evaluator& ev, Value v, CallArgs& a, bool with_attr, bool keep) {
  size_t first = with_attr ? 1 : 0;
  const Value* attribute = nullptr;
  if (with_attr) {
    if (a.pos.empty()) eval_fail("selectattr/rejectattr need an attribute name");
    attribute = &a.pos[0];
  }
  TestFn test = nullptr;
  CallArgs rest;
  if (a.pos.size() > first) {
    std::string name = need_str(a.pos[first], "test name");
    test = find_test(name);
    if (!test) eval_fail(fmt::format("unknown test '{}'", name));
    rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(first + 1), a.pos.end());
    rest.kw = a.kw;
  }
  List out;
  for (auto& x : iterate(v)) {
    Value subject = with_attr ? attr_path(x, attribute) : x;
    CallArgs copy = rest;
    bool r = test ? test(ev, subject, copy) : truthy(subject);
    if (r == keep) out.push_back(x);
  }
  return Value::make_list(std::move(out));
}
Value f_select(Evaluator& ev, Value v, CallArgs& a) {
  return select_impl(ev, std::move(v), a, false, true);
}
Value f_reject(Evaluator& ev, Value v, CallArgs& a) {
  return select_impl(ev, std::move(v), a, false, false);
}
Value f_selectattr(Evaluator& ev, Value v, CallArgs& a) {
  return select_impl(ev, std::move(v), a, true, true);
}
Value f_rejectattr(Evaluator& ev, Value v, CallArgs& a) {
  return select_impl(ev, std::move(v), a, true, false);
}

Value f_sort(Evaluator&, Value v, CallArgs& a) {
  bool reverse = arg_bool(a, 0, "reverse", false), cs = arg_bool(a, 1, "case_sensitive", false);
  const Value* attribute = arg(a, 2, "attribute");
  List items = iterate(v);
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t k = 0; k < items.size(); ++k)
    keyed.emplace_back(sort_key(items[k], attribute, cs), k);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first) : less(x.first, y.first);
  });
  List out;
  for (auto& [k, idx] : keyed) out.push_back(items[idx]);
  return Value::make_list(std::move(out));
}

Value f_string(Evaluator&, Value v, CallArgs&) {
  return Value::string(to_str(v));
}

Value f_sum(Evaluator&, Value v, CallArgs& a) {
  const Value* attribute = arg(a, 0, "attribute");
  const Value* start = arg(a, 1, "start");
  Value total = start ? *start : Value::integer(0);
  for (auto& x : iterate(v)) {
    Value item = attribute ? attr_path(x, attribute) : x;
    if (!total.is_number() || !item.is_number())
      eval_fail(fmt::format("unsupported operand type(s) for +: '{}' and '{}'", type_name(total),
                            type_name(item)));
    if (total.kind == Kind::kFloat || item.kind == Kind::kFloat) {
      auto d = [](const Value& y) {
        return y.kind == Kind::kFloat ? y.f : static_cast<double>(y.kind == Kind::kInt ? y.i : y.b);
      };
      total = Value::number(d(total) + d(item));
    } else {
      int64_t r;
      if (__builtin_add_overflow(total.kind == Kind::kInt ? total.i : total.b,
                                 item.kind == Kind::kInt ? item.i : item.b, &r))
        eval_fail("integer overflow");
      total = Value::integer(r);
    }
  }
  return total;
}

Value f_title(Evaluator&, Value v, CallArgs&) {
  // jinja2: split on runs of [-\s({\[<], capitalize the first character of each piece.
  std::u32string u = utf8_decode(to_str(v)), out;
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
  };
  size_t k = 0;
  while (k < u.size()) {
    size_t e = k;
    bool sep = is_sep(u[k]);
    while (e < u.size() && is_sep(u[e]) == sep) ++e;
    for (size_t x = k; x < e; ++x) out.push_back(x == k ? upper_cp(u[x]) : lower_cp(u[x]));
    k = e;
  }
  return Value::string(utf8_encode(out));
}

Value f_tojson(Evaluator&, Value v, CallArgs& a) {
  // transformers: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  DumpOptions opt;
  opt.ensure_ascii = arg_bool(a, 0, "ensure_ascii", false);
  const Value* indent = arg(a, 1, "indent");
  if (indent && indent->kind != Kind::kNone) {
    opt.pretty = true;
    opt.item_sep = ",";
    opt.indent_str =
        indent->kind == Kind::kString
            ? indent->str()
            : std::string(
                  static_cast<size_t>(std::clamp<int64_t>(to_index(*indent, "indent"), 0, 1000)),
                  ' ');
  }
  const Value* seps = arg(a, 2, "separators");
  if (seps && seps->kind != Kind::kNone) {
    if (!seps->is_sequence() || seps->list->size() != 2)
      eval_fail("separators must be a (item_separator, key_separator) pair");
    opt.item_sep = need_str((*seps->list)[0], "item separator");
    opt.key_sep = need_str((*seps->list)[1], "key separator");
  }
  opt.sort_keys = arg_bool(a, 3, "sort_keys", false);
  return Value::string(to_json(v, opt));
}

Value f_trim(Evaluator&, Value v, CallArgs& a) {
  return Value::string(py_strip(to_str(v), arg(a, 0, "chars"), 3));
}

Value f_unique(Evaluator&, Value v, CallArgs& a) {
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List out, seen;
  for (auto& x : iterate(v)) {
    Value k = sort_key(x, attribute, cs);
    bool dup = false;
    for (auto& s : seen) dup = dup || equals(s, k);
    if (!dup) {
      seen.push_back(k);
      out.push_back(x);
    }
  }
  return Value::make_list(std::move(out));
}

Value f_wordcount(Evaluator&, Value v, CallArgs&) {
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : utf8_decode(to_str(v))) {
    auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    bool w = c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
             cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
             cat == UTF8PROC_CATEGORY_NO;
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

// --- tests ---------------------------------------------------------------------------------------

const Value& test_arg(const CallArgs& a, const char* name) {
  const Value* v = a.get(0, name);
  if (!v) eval_fail(fmt::format("test needs an argument '{}'", name));
  return *v;
}
bool t_defined(Evaluator&, const Value& v, CallArgs&) {
  return !v.is_undefined();
}
bool t_undefined(Evaluator&, const Value& v, CallArgs&) {
  return v.is_undefined();
}
bool t_none(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kNone;
}
bool t_string(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kString;
}
bool t_number(Evaluator&, const Value& v, CallArgs&) {
  return v.is_number();
}
bool t_integer(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kInt;
}
bool t_float(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kFloat;
}
bool t_boolean(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kBool;
}
bool t_true(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kBool && v.b;
}
bool t_false(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kBool && !v.b;
}
bool t_mapping(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kDict;
}
bool t_sequence(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kString || v.is_sequence() || v.kind == Kind::kDict || v.is_undefined();
}
bool t_iterable(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kString || v.is_sequence() || v.kind == Kind::kDict || v.is_undefined();
}
bool t_callable(Evaluator&, const Value& v, CallArgs&) {
  return v.kind == Kind::kCallable;
}
int64_t int_for_test(const Value& v) {
  if (v.kind == Kind::kInt) return v.i;
  if (v.kind == Kind::kBool) return v.b;
  eval_fail(fmt::format("expected an integer, got {}", type_name(v)));
}
bool t_even(Evaluator&, const Value& v, CallArgs&) {
  return int_for_test(v) % 2 == 0;
}
bool t_odd(Evaluator&, const Value& v, CallArgs&) {
  return int_for_test(v) % 2 != 0;
}
bool t_divisibleby(Evaluator&, const Value& v, CallArgs& a) {
  int64_t d = int_for_test(test_arg(a, "num"));
  if (d == 0) eval_fail("integer division or modulo by zero");
  return d == -1 || int_for_test(v) % d == 0;
}
bool t_eq(Evaluator&, const Value& v, CallArgs& a) {
  return equals(v, test_arg(a, "other"));
}
bool t_ne(Evaluator&, const Value& v, CallArgs& a) {
  return !equals(v, test_arg(a, "other"));
}
bool ordered(const Value& x, const Value& y) {
  if (!((x.is_number() && y.is_number()) ||
        (x.kind == y.kind && (x.kind == Kind::kString || x.is_sequence()))))
    eval_fail(fmt::format("comparison not supported between instances of '{}' and '{}'",
                          type_name(x), type_name(y)));
  return less(x, y);
}
bool t_lt(Evaluator&, const Value& v, CallArgs& a) {
  return ordered(v, test_arg(a, "other"));
}
bool t_gt(Evaluator&, const Value& v, CallArgs& a) {
  return ordered(test_arg(a, "other"), v);
}
bool t_le(Evaluator&, const Value& v, CallArgs& a) {
  return !ordered(test_arg(a, "other"), v);
}
bool t_ge(Evaluator&, const Value& v, CallArgs& a) {
  return !ordered(v, test_arg(a, "other"));
}
bool t_in(Evaluator&, const Value& v, CallArgs& a) {
  const Value& seq = test_arg(a, "seq");
  if (seq.kind == Kind::kString)
    return v.kind == Kind::kString && find_sub(seq.str(), v.str()) != std::string::npos;
  if (seq.kind == Kind::kDict) return seq.dict->find(v) != nullptr;
  for (auto& x : iterate(seq))
    if (equals(x, v)) return true;
  return false;
}
bool t_sameas(Evaluator&, const Value& v, CallArgs& a) {
  const Value& o = test_arg(a, "other");
  if (v.kind != o.kind) return false;
  switch (v.kind) {
    case Kind::kNone:
    case Kind::kUndefined:
      return true;
    case Kind::kBool:
      return v.b == o.b;
    case Kind::kInt:
      return v.i == o.i && v.i >= -5 && v.i <= 256;  // CPython's small-int cache
    case Kind::kString:
      return v.s == o.s;
    case Kind::kList:
    case Kind::kTuple:
      return v.list == o.list;
    case Kind::kCallable:
      return v.fn == o.fn;
    case Kind::kFloat:
      return false;
    default:
      return v.dict == o.dict;
  }
}
bool str_islower(const Value& v) {
  bool any = false;
  for (char32_t c : utf8_decode(to_str(v))) {
    if (!is_cased(c)) continue;
    if (lower_cp(c) != c ||
        utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_LL)
      return false;
    any = true;
  }
  return any;
}
bool str_isupper(const Value& v) {
  bool any = false;
  for (char32_t c : utf8_decode(to_str(v))) {
    if (!is_cased(c)) continue;
    if (utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_LU) return false;
    any = true;
  }
  return any;
}
bool t_lower(Evaluator&, const Value& v, CallArgs&) {
  return str_islower(v);
}
bool t_upper(Evaluator&, const Value& v, CallArgs&) {
  return str_isupper(v);
}
bool t_escaped(Evaluator&, const Value&, CallArgs&) {
  return false;
}

// --- methods -------------------------------------------------------------------------------------

int64_t count_sub(const std::string& s, const std::string& sub) {
  if (sub.empty()) return static_cast<int64_t>(length(Value::string(s))) + 1;
  int64_t n = 0;
  for (size_t k = find_sub(s, sub); k != std::string::npos; k = find_sub(s, sub, k + sub.size()))
    ++n;
  return n;
}

int64_t cp_index(const std::string& s, size_t byte_off) {  // byte offset -> code point index
  return static_cast<int64_t>(length(Value::string(s.substr(0, byte_off))));
}

bool affix_match(const std::string& s, const Value& affix, bool start) {
  auto one = [&](const Value& x) {
    const std::string& p = need_str(x, start ? "startswith arg" : "endswith arg");
    if (p.size() > s.size()) return false;
    return start ? s.compare(0, p.size(), p) == 0
                 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (affix.kind == Kind::kTuple) {
    for (auto& x : *affix.list)
      if (one(x)) return true;
    return false;
  }
  return one(affix);
}

std::string py_format(const std::string& fmtstr, const CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t k = 0; k < fmtstr.size(); ++k) {
    char c = fmtstr[k];
    if (c == '}') {
      if (k + 1 < fmtstr.size() && fmtstr[k + 1] == '}')
        ++k;
      else
        eval_fail("Single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (k + 1 < fmtstr.size() && fmtstr[k + 1] == '{') {
      out += '{';
      ++k;
      continue;
    }
    size_t e = fmtstr.find('}', k);
    if (e == std::string::npos) eval_fail("Single '{' encountered in format string");
    std::string field = fmtstr.substr(k + 1, e - k - 1);
    if (field.find_first_of(":!.[") != std::string::npos)
      eval_fail("unsupported: format specs and conversions in str.format");
    const Value* v = nullptr;
    if (field.empty()) {
      if (auto_idx < a.pos.size()) v = &a.pos[auto_idx];
      ++auto_idx;
    } else if (std::all_of(field.begin(), field.end(),
                           [](char ch) { return ch >= '0' && ch <= '9'; })) {
      size_t i = std::stoul(field);
      if (i < a.pos.size()) v = &a.pos[i];
    } else {
      for (auto& [key, x] : a.kw)
        if (key == field) v = &x;
    }
    if (!v) eval_fail(fmt::format("format: missing argument '{}'", field));
    out += to_str(*v);
    check_string_size(out.size());
    k = e;
  }
  return out;
}

Value string_method(const Value& self, const std::string& name) {
  static const char* const kNames[] = {
      "startswith", "endswith", "split",   "rsplit",     "strip",        "lstrip",      "rstrip",
      "upper",      "lower",    "title",   "capitalize", "replace",      "find",        "rfind",
      "index",      "count",    "join",    "format",     "splitlines",   "isdigit",     "isalpha",
      "isalnum",    "isspace",  "islower", "isupper",    "removeprefix", "removesuffix"};
  if (std::find_if(std::begin(kNames), std::end(kNames),
                   [&](const char* n) { return name == n; }) == std::end(kNames))
    return Value::undefined(fmt::format("'str object' has no attribute '{}'", name));
  return make_fn(name, [self, name](Evaluator&, CallArgs& a) -> Value {
    const std::string& s = self.str();
    if (name == "startswith" || name == "endswith") {
      const Value* p = arg(a, 0, "prefix");
      if (!p) eval_fail(name + "() takes at least 1 argument");
      return Value::boolean(affix_match(s, *p, name == "startswith"));
    }
    if (name == "split" || name == "rsplit") {
      int64_t maxsplit = -1;
      if (const Value* m = arg(a, 1, "maxsplit")) maxsplit = to_index(*m, "maxsplit");
      return Value::make_list(py_split(s, arg(a, 0, "sep"), maxsplit, name == "rsplit"));
    }
    if (name == "strip") return Value::string(py_strip(s, arg(a, 0, "chars"), 3));
    if (name == "lstrip") return Value::string(py_strip(s, arg(a, 0, "chars"), 1));
    if (name == "rstrip") return Value::string(py_strip(s, arg(a, 0, "chars"), 2));
    if (name == "upper") return Value::string(py_upper(s));
    if (name == "lower") return Value::string(py_lower(s));
    if (name == "title") return Value::string(py_title(s));
    if (name == "capitalize") return Value::string(py_capitalize(s));
    if (name == "replace") {
      if (a.pos.size() < 2) eval_fail("replace() takes at least 2 arguments");
      int64_t count = a.pos.size() > 2 ? to_index(a.pos[2], "count") : -1;
      return Value::string(py_replace(s, need_str(a.pos[0], "replace arg"),
                                      need_str(a.pos[1], "replace arg"), count));
    }
    if (name == "find" || name == "rfind" || name == "index" || name == "count") {
      if (a.pos.empty()) eval_fail(name + "() takes at least 1 argument");
      if (a.pos.size() > 1) eval_fail("unsupported: start/end arguments of str." + name);
      const std::string& sub = need_str(a.pos[0], "substring");
      if (name == "count") return Value::integer(count_sub(s, sub));
      size_t f = name == "rfind" ? Reversed(s, sub).rfind(s.size()) : find_sub(s, sub);
      if (f == std::string::npos) {
        if (name == "index") eval_fail("substring not found");
        return Value::integer(-1);
      }
      return Value::integer(cp_index(s, f));
    }
    if (name == "join") {
      if (a.pos.empty()) eval_fail("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (auto& x : iterate(a.pos[0])) {
        if (!first) out += s;
        first = false;
        out += need_str(x, "sequence item");
        check_string_size(out.size());
      }
      return Value::string(std::move(out));
    }
    if (name == "format") return Value::string(py_format(s, a));
    if (name == "splitlines") {
      List out;
      for (auto& l : py_splitlines(utf8_decode(s))) out.push_back(Value::string(utf8_encode(l)));
      return Value::make_list(std::move(out));
    }
    if (name == "removeprefix" || name == "removesuffix") {
      if (a.pos.empty()) eval_fail(name + "() takes exactly one argument");
      const std::string& p = need_str(a.pos[0], "affix");
      if (name == "removeprefix")
        return Value::string(s.compare(0, p.size(), p) == 0 ? s.substr(p.size()) : s);
      bool ends = p.size() <= s.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
      return Value::string(ends ? s.substr(0, s.size() - p.size()) : s);
    }
    std::u32string u = utf8_decode(s);
    if (u.empty() || name == "islower" || name == "isupper") {
      if (name == "islower") return Value::boolean(str_islower(self));
      if (name == "isupper") return Value::boolean(str_isupper(self));
      return Value::boolean(false);
    }
    auto all = [&](auto pred) { return std::all_of(u.begin(), u.end(), pred); };
    auto cat = [](char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); };
    auto alpha = [&](char32_t c) {
      return cat(c) >= UTF8PROC_CATEGORY_LU && cat(c) <= UTF8PROC_CATEGORY_LO;
    };
    auto digit = [&](char32_t c) { return cat(c) == UTF8PROC_CATEGORY_ND; };
    if (name == "isdigit") return Value::boolean(all(digit));
    if (name == "isalpha") return Value::boolean(all(alpha));
    if (name == "isalnum")
      return Value::boolean(all([&](char32_t c) {
        return alpha(c) || digit(c) || cat(c) == UTF8PROC_CATEGORY_NL ||
               cat(c) == UTF8PROC_CATEGORY_NO;
      }));
    return Value::boolean(all(py_isspace));  // isspace
  });
}

Value dict_method(const Value& self, const std::string& name) {
  if (name != "items" && name != "keys" && name != "values" && name != "get") return Value{};
  return make_fn(name, [self, name](Evaluator&, CallArgs& a) -> Value {
    List out;
    if (name == "get") {
      if (a.pos.empty()) eval_fail("get expected at least 1 argument");
      const Value* v = self.dict->find(a.pos[0]);
      return v ? *v : a.pos.size() > 1 ? a.pos[1] : Value::none();
    }
    for (auto& [k, v] : self.dict->items)
      out.push_back(name == "items" ? Value::make_tuple({k, v}) : name == "keys" ? k : v);
    return Value::make_list(std::move(out));
  });
}

Value list_method(const Value& self, const std::string& name) {
  if (name != "index" && name != "count") return Value{};
  return make_fn(name, [self, name](Evaluator&, CallArgs& a) -> Value {
    if (a.pos.size() != 1) eval_fail(fmt::format("{}() takes exactly one argument", name));
    int64_t n = 0;
    for (size_t k = 0; k < self.list->size(); ++k)
      if (equals((*self.list)[k], a.pos[0])) {
        if (name == "index") return Value::integer(static_cast<int64_t>(k));
        ++n;
      }
    if (name == "index") eval_fail(fmt::format("{} is not in list", to_repr(a.pos[0])));
    return Value::integer(n);
  });
}

bool is_unsafe_mutator(const Value& obj, const std::string& name) {
  static const char* const kList[] = {"append", "extend",  "insert", "pop",
                                      "remove", "reverse", "sort",   "clear"};
  static const char* const kDict[] = {"pop", "popitem", "setdefault", "update", "clear"};
  auto in = [&](const auto& arr) {
    return std::find_if(std::begin(arr), std::end(arr), [&](const char* n) { return name == n; }) !=
           std::end(arr);
  };
  return (obj.kind == Kind::kList && in(kList)) || (obj.kind == Kind::kDict && in(kDict));
}

std::string object_desc(const Value& v) {
  return v.kind == Kind::kNone ? "None" : type_name(v) + " object";
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name) {
  if (is_unsafe_mutator(obj, name))
    return Value::undefined(
        fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(obj)));
  switch (obj.kind) {
    case Kind::kString:
      return string_method(obj, name);
    case Kind::kDict: {  // jinja2 tries the Python attribute (a method) before the key
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
      if (const Value* v = obj.dict->find(std::string_view(name))) return *v;
      break;
    }
    case Kind::kList:
    case Kind::kTuple: {
      Value m = list_method(obj, name);
      if (!m.is_undefined()) return m;
      break;
    }
    default:
      break;
  }
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_desc(obj), name));
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Kind::kDict:
      if (const Value* v = obj.dict->find(key)) return *v;
      break;
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kString:
      if (key.kind == Kind::kInt || key.kind == Kind::kBool) {
        int64_t i = key.kind == Kind::kInt ? key.i : key.b;
        if (obj.kind == Kind::kString) {
          std::u32string u = utf8_decode(obj.str());
          int64_t n = static_cast<int64_t>(u.size());
          if (i < 0) i += n;
          if (i >= 0 && i < n)
            return Value::string(utf8_encode(std::u32string(1, u[static_cast<size_t>(i)])));
        } else {
          int64_t n = static_cast<int64_t>(obj.list->size());
          if (i < 0) i += n;
          if (i >= 0 && i < n) return (*obj.list)[static_cast<size_t>(i)];
        }
        return Value::undefined(
            fmt::format("'{}' has no element {}", object_desc(obj), to_repr(key)));
      }
      break;
    default:
      break;
  }
  if (key.kind == Kind::kString) return get_attr(obj, key.str());  // jinja2 falls back to getattr
  return Value::undefined(fmt::format("'{}' has no attribute {}", object_desc(obj), to_repr(key)));
}

FilterFn find_filter(std::string_view name) {
  static const std::unordered_map<std::string_view, FilterFn> kFilters = {
      {"abs", f_abs},           {"batch", f_batch},     {"capitalize", f_capitalize},
      {"count", f_length},      {"d", f_default},       {"default", f_default},
      {"dictsort", f_dictsort}, {"e", f_escape},        {"escape", f_escape},
      {"first", f_first},       {"float", f_float},     {"indent", f_indent},
      {"int", f_int},           {"items", f_items},     {"join", f_join},
      {"last", f_last},         {"length", f_length},   {"list", f_list},
      {"lower", f_lower},       {"map", f_map},         {"max", f_max},
      {"min", f_min},           {"reject", f_reject},   {"rejectattr", f_rejectattr},
      {"replace", f_replace},   {"reverse", f_reverse}, {"round", f_round},
      {"safe", f_safe},         {"select", f_select},   {"selectattr", f_selectattr},
      {"sort", f_sort},         {"string", f_string},   {"sum", f_sum},
      {"title", f_title},       {"tojson", f_tojson},   {"trim", f_trim},
      {"unique", f_unique},     {"upper", f_upper},     {"wordcount", f_wordcount},
  };
  auto it = kFilters.find(name);
  return it == kFilters.end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  static const std::unordered_map<std::string_view, TestFn> kTests = {
      {"boolean", t_boolean},
      {"callable", t_callable},
      {"defined", t_defined},
      {"divisibleby", t_divisibleby},
      {"eq", t_eq},
      {"equalto", t_eq},
      {"==", t_eq},
      {"escaped", t_escaped},
      {"even", t_even},
      {"false", t_false},
      {"float", t_float},
      {"ge", t_ge},
      {">=", t_ge},
      {"gt", t_gt},
      {">", t_gt},
      {"greaterthan", t_gt},
      {"in", t_in},
      {"integer", t_integer},
      {"iterable", t_iterable},
      {"le", t_le},
      {"<=", t_le},
      {"lower", t_lower},
      {"lt", t_lt},
      {"<", t_lt},
      {"lessthan", t_lt},
      {"mapping", t_mapping},
      {"ne", t_ne},
      {"!=", t_ne},
      {"none", t_none},
      {"number", t_number},
      {"odd", t_odd},
      {"sameas", t_sameas},
      {"sequence", t_sequence},
      {"string", t_string},
      {"true", t_true},
      {"undefined", t_undefined},
      {"upper", t_upper},
  };
  auto it = kTests.find(name);
  return it == kTests.end() ? nullptr : it->second;
}

Value make_global(std::string_view name) {
  if (name == "range")
    return make_fn("range", [](Evaluator& ev, CallArgs& a) -> Value {
      if (a.pos.empty() || a.pos.size() > 3 || !a.kw.empty())
        eval_fail("range expected 1 to 3 integer arguments");
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) {
        stop = to_index(a.pos[0], "range argument");
      } else {
        start = to_index(a.pos[0], "range argument");
        stop = to_index(a.pos[1], "range argument");
        if (a.pos.size() == 3) step = to_index(a.pos[2], "range argument");
      }
      if (step == 0) eval_fail("range() arg 3 must not be zero");
      long double n = step > 0 ? (static_cast<long double>(stop) - start + step - 1) / step
                               : (static_cast<long double>(start) - stop - step - 1) / -step;
      if (n > 100000)  // the sandbox's MAX_RANGE
        eval_fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      List out;
      for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step)
        out.push_back(Value::integer(x));
      count_iterations(ev, out.size());
      return Value::make_list(std::move(out));
    });
  if (name == "namespace" || name == "dict")
    return make_fn(
        std::string(name),
        [kind = name == "namespace" ? Kind::kNamespace : Kind::kDict](Evaluator&,
                                                                      CallArgs& a) -> Value {
          Value d = Value::make_dict();
          d.kind = kind;
          if (a.pos.size() > 1) eval_fail("expected at most 1 positional argument");
          if (!a.pos.empty()) {
            const Value& init = a.pos[0];
            if (init.kind == Kind::kDict) {
              for (auto& [k, v] : init.dict->items) d.dict->set(k, v);
            } else {
              for (auto& pair : iterate(init)) {
                List kv = iterate(pair);
                if (kv.size() != 2)
                  eval_fail("dictionary update sequence element has wrong length; 2 is required");
                d.dict->set(kv[0], kv[1]);
              }
            }
          }
          for (auto& [k, v] : a.kw) {
            if (kind == Kind::kNamespace && !k.empty() && k[0] == '_')
              eval_fail(
                  fmt::format("Chat templates cannot store underscore-prefixed attributes on a "
                              "namespace, but got '{}'.",
                              k));
            d.dict->set(Value::string(k), v);
          }
          return d;
        });
  if (name == "raise_exception")
    return make_fn("raise_exception", [](Evaluator&, CallArgs& a) -> Value {
      eval_fail("raise_exception: " + (a.pos.empty() ? std::string() : to_str(a.pos[0])));
    });
  if (name == "strftime_now")
    return make_fn("strftime_now", [](Evaluator&, CallArgs& a) -> Value {
      if (a.pos.size() != 1) eval_fail("strftime_now takes exactly one argument");
      std::string f = need_str(a.pos[0], "format");
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[512];
      size_t n = f.empty() ? 0 : std::strftime(buf, sizeof buf, f.c_str(), &tm);
      if (n == 0 && !f.empty()) eval_fail("strftime_now: format too long");
      return Value::string(std::string(buf, n));
    });
  return Value{};
}

}  // namespace nnpipe::jinja
