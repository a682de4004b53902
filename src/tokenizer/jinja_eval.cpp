// Tree-walking evaluator: statements, scoping (jinja2: a for-loop iteration and a macro call are
// scopes, `if` is not), operators with Python semantics, and the output/iteration/depth limits.
#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace nnpipe::jinja {

namespace {
enum class Flow { kNormal, kBreak, kContinue };

// Hashed: a template may set tens of thousands of distinct names in one scope.
struct Frame {
  std::unordered_map<std::string, Value> vars;
  Value* find(const std::string& name) {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : &it->second;
  }
  void set(const std::string& name, Value v) { vars.insert_or_assign(name, std::move(v)); }
};

[[noreturn]] void undefined_fail(const Value& v) {
  eval_fail(v.s && !v.s->empty() ? *v.s : "value is undefined");
}

int64_t int_of(const Value& v) {
  return v.kind == Kind::kInt ? v.i : v.b ? 1 : 0;
}
double float_of(const Value& v) {
  return v.kind == Kind::kFloat ? v.f : static_cast<double>(int_of(v));
}

[[noreturn]] void overflow() {
  eval_fail("integer overflow (nnpipe's integers are 64-bit)");
}

Value repeat(const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.kind == Kind::kString) {
    if (n > 0 && seq.str().size() > kMaxStringBytes / static_cast<uint64_t>(n))
      check_string_size(kMaxStringBytes + 1);
    size_t total = seq.str().size() * static_cast<size_t>(n);
    precheck_bytes(total);  // refuse before building it, not after
    std::string out;
    out.reserve(total);
    if (total > 0) out = seq.str();
    while (out.size() < total)  // doubling: a few large copies rather than n small ones
      out.append(out, 0, std::min(out.size(), total - out.size()));
    return Value::string(std::move(out));
  }
  if (n > 0 && seq.list->size() > kMaxListItems / static_cast<uint64_t>(n))
    eval_fail("list too long");
  precheck_bytes(seq.list->size() * static_cast<size_t>(n) * sizeof(Value));
  List out;
  for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
  return seq.kind == Kind::kList ? Value::make_list(std::move(out))
                                 : Value::make_tuple(std::move(out));
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  eval_fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a),
                        type_name(b)));
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_fail(a);
  if (b.is_undefined()) undefined_fail(b);
  bool nums = a.is_number() && b.is_number();
  bool flt = nums && (a.kind == Kind::kFloat || b.kind == Kind::kFloat);
  if (op == "+") {
    if (nums) {
      if (flt) return Value::number(float_of(a) + float_of(b));
      int64_t r;
      if (__builtin_add_overflow(int_of(a), int_of(b), &r)) overflow();
      return Value::integer(r);
    }
    if (a.kind == Kind::kString && b.kind == Kind::kString) {
      check_string_size(a.str().size() + b.str().size());
      return Value::string(a.str() + b.str());
    }
    if (a.kind == b.kind && a.is_sequence()) {
      if (a.list->size() + b.list->size() > kMaxListItems) eval_fail("list too long");
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return a.kind == Kind::kList ? Value::make_list(std::move(out))
                                   : Value::make_tuple(std::move(out));
    }
    if (a.kind == Kind::kString)
      eval_fail(fmt::format("can only concatenate str (not \"{}\") to str", type_name(b)));
    if (a.kind == Kind::kList)
      eval_fail(fmt::format("can only concatenate list (not \"{}\") to list", type_name(b)));
    bad_operands("+", a, b);
  }
  if (op == "*") {
    if (nums) {
      if (flt) return Value::number(float_of(a) * float_of(b));
      int64_t r;
      if (__builtin_mul_overflow(int_of(a), int_of(b), &r)) overflow();
      return Value::integer(r);
    }
    if ((a.kind == Kind::kString || a.is_sequence()) && b.is_number() && b.kind != Kind::kFloat)
      return repeat(a, int_of(b));
    if ((b.kind == Kind::kString || b.is_sequence()) && a.is_number() && a.kind != Kind::kFloat)
      return repeat(b, int_of(a));
    bad_operands("*", a, b);
  }
  if (!nums) {
    if (op == "%" && a.kind == Kind::kString)
      eval_fail("unsupported: printf-style string formatting with '%'");
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (flt) return Value::number(float_of(a) - float_of(b));
    int64_t r;
    if (__builtin_sub_overflow(int_of(a), int_of(b), &r)) overflow();
    return Value::integer(r);
  }
  if (op == "/") {
    if (float_of(b) == 0) eval_fail("division by zero");
    return Value::number(float_of(a) / float_of(b));
  }
  if (op == "//" || op == "%") {
    if (flt) {
      double x = float_of(a), y = float_of(b);
      if (y == 0) eval_fail(op == "%" ? "float modulo" : "float floor division by zero");
      // CPython's float_divmod.
      double m = std::fmod(x, y);
      double div = (x - m) / y;
      if (m != 0) {
        if ((y < 0) != (m < 0)) {
          m += y;
          div -= 1.0;
        }
      } else {
        m = std::copysign(0.0, y);
      }
      if (op == "%") return Value::number(m);
      double fd = 0;
      if (div != 0) {
        fd = std::floor(div);
        if (div - fd > 0.5) fd += 1.0;
      } else {
        fd = std::copysign(0.0, x / y);
      }
      return Value::number(fd);
    }
    int64_t x = int_of(a), y = int_of(b);
    if (y == 0)
      eval_fail(op == "%" ? "integer modulo by zero" : "integer division or modulo by zero");
    if (x == INT64_MIN && y == -1) {
      if (op == "%") return Value::integer(0);
      overflow();
    }
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      m += y;
      --q;
    }
    return Value::integer(op == "%" ? m : q);
  }
  if (op == "**") {
    if (!flt && int_of(b) >= 0) {
      int64_t base = int_of(a), e = int_of(b), r = 1;
      while (e > 0) {
        if (e & 1)
          if (__builtin_mul_overflow(r, base, &r)) overflow();
        e >>= 1;
        if (e > 0 && __builtin_mul_overflow(base, base, &base)) overflow();
      }
      return Value::integer(r);
    }
    double x = float_of(a), y = float_of(b);
    if (x == 0 && y < 0) eval_fail("0.0 cannot be raised to a negative power");
    double r = std::pow(x, y);
    if (std::isnan(r) && !std::isnan(x) && !std::isnan(y))
      eval_fail("unsupported: complex result of '**'");
    return Value::number(r);
  }
  eval_fail("unknown operator " + op);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::kString:
      if (item.kind != Kind::kString)
        eval_fail(
            fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return find_sub(container.str(), item.str()) != std::string::npos;
    case Kind::kList:
    case Kind::kTuple:
      charge_steps(container.list->size());
      for (auto& v : *container.list)
        if (equals(v, item)) return true;
      return false;
    case Kind::kDict:
      return container.dict->find(item) != nullptr;
    case Kind::kUndefined:
      return false;
    default:
      eval_fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) undefined_fail(a);
  if (b.is_undefined()) undefined_fail(b);
  auto lt = [&](const Value& x, const Value& y) {
    bool ok = (x.is_number() && y.is_number()) ||
              (x.kind == y.kind && (x.kind == Kind::kString || x.is_sequence()));
    if (!ok)
      eval_fail(fmt::format("'{}' not supported between instances of '{}' and '{}'", op,
                            type_name(a), type_name(b)));
    return less(x, y);
  };
  if (op == "<") return lt(a, b);
  if (op == ">") return lt(b, a);
  if (op == "<=") return !lt(b, a);
  return !lt(a, b);  // >=
}

Value slice(const Value& obj, const Value* start, const Value* stop, const Value* step) {
  auto idx = [](const Value* v, const char* what) -> std::optional<int64_t> {
    if (!v || v->kind == Kind::kNone) return std::nullopt;
    if (v->kind != Kind::kInt && v->kind != Kind::kBool)
      eval_fail(fmt::format("slice {} must be an integer or None, not {}", what, type_name(*v)));
    return int_of(*v);
  };
  auto s0 = idx(start, "start"), s1 = idx(stop, "stop"), st = idx(step, "step");
  int64_t k = st.value_or(1);
  if (k == 0) eval_fail("slice step cannot be zero");
  std::u32string chars;
  bool is_str = obj.kind == Kind::kString;
  if (is_str)
    chars = utf8_decode(obj.str());
  else if (!obj.is_sequence()) {
    if (obj.is_undefined()) undefined_fail(obj);
    eval_fail(fmt::format("'{}' object is not subscriptable", type_name(obj)));
  }
  int64_t n = static_cast<int64_t>(is_str ? chars.size() : obj.list->size());
  // CPython's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = k < 0 ? -1 : 0;
    } else if (x >= n) {
      x = k < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t a = adjust(s0, k < 0 ? n - 1 : 0), b = adjust(s1, k < 0 ? -1 : n);
  std::u32string out_chars;
  List out;
  for (int64_t x = a; k > 0 ? x < b : x > b; x += k) {
    if (is_str)
      out_chars.push_back(chars[static_cast<size_t>(x)]);
    else
      out.push_back((*obj.list)[static_cast<size_t>(x)]);
  }
  if (is_str) return Value::string(utf8_encode(out_chars));
  return obj.kind == Kind::kList ? Value::make_list(std::move(out))
                                 : Value::make_tuple(std::move(out));
}

bool contains_ref(const Value& v, const Dict* target, int depth) {
  if (depth > kMaxValueDepth) return true;
  charge_steps(1);  // values may share parts: a DAG can be exponentially large as a tree
  if (v.dict.get() == target) return true;
  if (v.list)
    for (auto& e : *v.list)
      if (contains_ref(e, target, depth + 1)) return true;
  if (v.dict)
    for (auto& [k, e] : v.dict->items)
      if (contains_ref(e, target, depth + 1)) return true;
  return false;
}
}  // namespace

class Evaluator {
 public:
  Evaluator(const Template& t, const Value& context) : tmpl_(t) {
    frames_.emplace_back();
    if (context.kind == Kind::kDict)
      for (auto& [k, v] : context.dict->items)
        if (k.kind == Kind::kString) frames_[0].set(k.str(), v);
    frames_.emplace_back();  // template-level `set`s
  }

  std::string run() {
    std::string out;
    out_ = &out;
    exec_body(tmpl_.body);
    return out;
  }

  void count(uint64_t n) {
    charge_steps(n);
    iterations_ += n;
    if (iterations_ > kMaxLoopIterations)
      eval_fail(
          fmt::format("more than {} loop iterations: aborting the template", kMaxLoopIterations));
  }

  Value call(const Value& fn, CallArgs& args) {
    if (fn.kind == Kind::kCallable) return fn.fn->call(*this, args);
    if (fn.is_undefined()) undefined_fail(fn);
    eval_fail(fmt::format("'{}' object is not callable", type_name(fn)));
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Evaluator& e) : e_(e) {
      if (++e_.depth_ > 1500) eval_fail("template recursion too deep");
    }
    ~DepthGuard() { --e_.depth_; }
    Evaluator& e_;
  };

  [[noreturn]] void fail_at(const Node& n, const std::string& msg) const {
    fail(ErrorCode::kFormat, "{}:{}:{}: {}", tmpl_.origin, n.pos.line, n.pos.column, msg);
  }

  void emit(const std::string& s) {
    charge_bytes(s.size());
    out_->append(s);
    if (out_->size() > kMaxOutputBytes)
      eval_fail(fmt::format("output larger than {} bytes", kMaxOutputBytes));
  }

  Value lookup(const std::string& name) {
    for (size_t k = frames_.size(); k-- > 0;)
      if (Value* v = frames_[k].find(name)) return *v;
    Value g = make_global(name);
    if (!g.is_undefined()) return g;
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }

  void assign(const Node& n, const Value& v) {
    if (!n.flag) {
      frames_.back().set(n.ops[0], v);
      return;
    }
    List items = iterate(v);
    if (items.size() != n.ops.size())
      eval_fail(fmt::format("cannot unpack {} values into {} names", items.size(), n.ops.size()));
    for (size_t k = 0; k < items.size(); ++k) frames_.back().set(n.ops[k], items[k]);
  }

  Flow exec_body(const NodeList& body) {
    for (auto& st : body) {
      Flow f = exec(*st);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  std::string capture(const NodeList& body) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
      exec_body(body);
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return buf;
  }

  Flow exec(const Node& n) {
    charge_steps(1);
    if (n.kind == NodeKind::kText) {
      emit(n.name);
      return Flow::kNormal;
    }
    DepthGuard guard(*this);
    try {
      return exec_inner(n);
    } catch (const EvalError& e) {
      fail_at(n, e.message);
    }
  }

  Flow exec_inner(const Node& n) {
    switch (n.kind) {
      case NodeKind::kOutput:
        emit(to_str(eval(*n.args[0])));
        return Flow::kNormal;
      case NodeKind::kIf:
        return exec_body(truthy(eval(*n.args[0])) ? n.body : n.else_body);
      case NodeKind::kFor:
        return exec_for(n);
      case NodeKind::kSet:
        if (!n.name.empty()) {
          Value ns = lookup(n.name);
          if (ns.kind != Kind::kNamespace)
            eval_fail("Can't assign attribute on non-namespace object");
          Value v = eval(*n.args[0]);
          if (contains_ref(v, ns.dict.get(), 0))
            eval_fail("unsupported: a namespace that contains itself");
          ns.dict->set(Value::string(n.ops[0]), std::move(v));
        } else {
          assign(n, eval(*n.args[0]));
        }
        return Flow::kNormal;
      case NodeKind::kSetBlock: {
        Value v = Value::string(capture(n.body));
        if (!n.args.empty()) v = apply_filters(*n.args[0], v);
        assign(n, v);
        return Flow::kNormal;
      }
      case NodeKind::kMacro:
        frames_.back().set(n.name, make_macro(n));
        return Flow::kNormal;
      case NodeKind::kCallBlock: {
        const Node& call = *n.else_body[0];
        Value fn = eval(*call.args[0]);
        CallArgs args = eval_args(call, 1);
        args.kw.emplace_back("caller", make_macro(n));
        emit(to_str(this->call(fn, args)));
        return Flow::kNormal;
      }
      case NodeKind::kFilterBlock:
        emit(to_str(apply_filters(*n.args[0], Value::string(capture(n.body)))));
        return Flow::kNormal;
      case NodeKind::kBreak:
        return Flow::kBreak;
      case NodeKind::kContinue:
        return Flow::kContinue;
      case NodeKind::kWith: {
        Frame f;
        for (size_t k = 0; k < n.ops.size(); ++k) f.set(n.ops[k], eval(*n.args[k]));
        return scoped(std::move(f), n.body);
      }
      case NodeKind::kScope:
        return scoped(Frame{}, n.body);
      default:
        eval_fail("internal error: expression used as a statement");
    }
  }

  Flow scoped(Frame f, const NodeList& body) {
    frames_.push_back(std::move(f));
    size_t depth = frames_.size();
    try {
      exec_body(body);
    } catch (...) {
      frames_.resize(depth - 1);
      throw;
    }
    frames_.resize(depth - 1);
    return Flow::kNormal;
  }

  Flow exec_for(const Node& n) {
    // Lists are immutable: iterate over the list itself rather than a copy.
    Value seq = eval(*n.args[0]);
    std::shared_ptr<const List> holder;
    if (seq.is_sequence()) {
      charge_steps(seq.list->size());
      holder = seq.list;
    } else {
      holder = std::make_shared<const List>(iterate(seq));
    }
    if (n.args[1]) {  // `for x in y if cond`: filtered before the loop, so loop.length counts
                      // matches
      List kept;
      for (auto& item : *holder) {
        count(1);
        frames_.emplace_back();
        try {
          assign(n, item);
          if (truthy(eval(*n.args[1]))) kept.push_back(item);
        } catch (...) {
          frames_.pop_back();
          throw;
        }
        frames_.pop_back();
      }
      charge_bytes(kept.size() * sizeof(Value));
      holder = std::make_shared<const List>(std::move(kept));
    }
    const List& items = *holder;
    if (items.empty()) return exec_body(n.else_body);
    int64_t len = static_cast<int64_t>(items.size());
    size_t depth = frames_.size();
    try {
      for (int64_t k = 0; k < len; ++k) {
        count(1);
        frames_.emplace_back();  // each iteration is its own scope in jinja2
        assign(n, items[static_cast<size_t>(k)]);
        Value loop{Kind::kLoop};
        loop.dict = std::make_shared<Dict>();
        // The key strings are shared by all loops (not re-created, nor charged, per iteration).
        static const std::vector<Value> kKeys = [] {
          std::vector<Value> keys;
          for (const char* k : {"index", "index0", "revindex", "revindex0", "first", "last",
                                "length", "depth", "depth0", "previtem", "nextitem", "cycle"}) {
            Value key{Kind::kString};
            key.s = std::make_shared<const std::string>(k);
            keys.push_back(std::move(key));
          }
          return keys;
        }();
        size_t key = 0;
        auto put = [&](const char*, Value v) {
          loop.dict->items.emplace_back(kKeys[key++], std::move(v));
        };
        put("index", Value::integer(k + 1));
        put("index0", Value::integer(k));
        put("revindex", Value::integer(len - k));
        put("revindex0", Value::integer(len - k - 1));
        put("first", Value::boolean(k == 0));
        put("last", Value::boolean(k == len - 1));
        put("length", Value::integer(len));
        put("depth", Value::integer(1));
        put("depth0", Value::integer(0));
        put("previtem", k > 0 ? items[static_cast<size_t>(k - 1)]
                              : Value::undefined("there is no previous item"));
        put("nextitem", k + 1 < len ? items[static_cast<size_t>(k + 1)]
                                    : Value::undefined("there is no next item"));
        Value cycle{Kind::kCallable};
        cycle.fn = std::make_shared<Callable>(
            Callable{"cycle", [k](Evaluator&, CallArgs& a) {
                       if (a.pos.empty()) eval_fail("no items for cycling given");
                       return a.pos[static_cast<size_t>(k) % a.pos.size()];
                     }});
        put("cycle", cycle);
        frames_.back().set("loop", loop);
        Flow f = exec_body(n.body);
        frames_.resize(depth);
        if (f == Flow::kBreak) break;
      }
    } catch (...) {
      frames_.resize(depth);
      throw;
    }
    return Flow::kNormal;
  }

  Value make_macro(const Node& n) {
    Value v{Kind::kCallable};
    const Node* node = &n;
    v.fn = std::make_shared<Callable>(
        Callable{n.name, [node](Evaluator& ev, CallArgs& a) { return ev.run_macro(*node, a); }});
    return v;
  }

  Value run_macro(const Node& n, CallArgs& a) {
    if (++call_depth_ > kMaxCallDepth) {
      --call_depth_;
      eval_fail(fmt::format("macro calls nested more than {} deep", kMaxCallDepth));
    }
    Frame f;
    if (a.pos.size() > n.ops.size())
      eval_fail(fmt::format("macro '{}' takes not more than {} argument(s)", n.name, n.ops.size()));
    for (size_t k = 0; k < n.ops.size(); ++k) {
      const Value* given = a.get(k, n.ops[k]);
      if (given)
        f.set(n.ops[k], *given);
      else if (n.args[k])
        f.set(n.ops[k], eval(*n.args[k]));
      else
        f.set(n.ops[k], Value::undefined(fmt::format("parameter '{}' was not provided", n.ops[k])));
    }
    for (auto& [k, v] : a.kw) {
      bool known = k == "caller";
      for (auto& p : n.ops) known = known || p == k;
      if (!known) eval_fail(fmt::format("macro '{}' takes no keyword argument '{}'", n.name, k));
      if (k == "caller") f.set(k, v);
    }
    // A macro sees the template's globals, not the caller's locals.
    std::vector<Frame> saved(std::make_move_iterator(frames_.begin() + 2),
                             std::make_move_iterator(frames_.end()));
    frames_.resize(2);
    frames_.push_back(std::move(f));
    std::string out;
    try {
      out = capture(n.body);
    } catch (...) {
      frames_.resize(2);
      for (auto& fr : saved) frames_.push_back(std::move(fr));
      --call_depth_;
      throw;
    }
    frames_.resize(2);
    for (auto& fr : saved) frames_.push_back(std::move(fr));
    --call_depth_;
    return Value::string(std::move(out));
  }

  CallArgs eval_args(const Node& n, size_t first) {
    CallArgs a;
    for (size_t k = first; k < n.args.size(); ++k) a.pos.push_back(eval(*n.args[k]));
    for (auto& [key, v] : n.kwargs) a.kw.emplace_back(key, eval(*v));
    return a;
  }

  // A filter chain whose innermost input is nullptr (filter blocks, `set x | f`).
  Value apply_filters(const Node& n, const Value& input) {
    Value in = n.args[0] ? apply_filters(*n.args[0], input) : input;
    CallArgs a = eval_args(n, 1);
    return n.filter(*this, in, a);
  }

 public:
  Value eval(const Node& n) {
    DepthGuard guard(*this);
    charge_steps(1);
    try {
      return eval_inner(n);
    } catch (const EvalError& e) {
      fail_at(n, e.message);
    }
  }

 private:
  Value eval_inner(const Node& n) {
    switch (n.kind) {
      case NodeKind::kLiteral:
        return n.literal;
      case NodeKind::kName:
        return lookup(n.name);
      case NodeKind::kList:
      case NodeKind::kTuple: {
        List items;
        for (auto& a : n.args) items.push_back(eval(*a));
        return n.kind == NodeKind::kList ? Value::make_list(std::move(items))
                                         : Value::make_tuple(std::move(items));
      }
      case NodeKind::kDict: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < n.args.size(); k += 2) {
          Value key = eval(*n.args[k]);
          if (key.kind == Kind::kList || key.kind == Kind::kDict || key.kind == Kind::kUndefined)
            eval_fail(fmt::format("unhashable type: '{}'", type_name(key)));
          d.dict->set(std::move(key), eval(*n.args[k + 1]));
        }
        return d;
      }
      case NodeKind::kUnary: {
        Value v = eval(*n.args[0]);
        if (v.is_undefined()) undefined_fail(v);
        if (!v.is_number())
          eval_fail(fmt::format("bad operand type for unary {}: '{}'", n.name, type_name(v)));
        if (n.name == "+") return v.kind == Kind::kFloat ? v : Value::integer(int_of(v));
        if (v.kind == Kind::kFloat) return Value::number(-v.f);
        if (int_of(v) == INT64_MIN) overflow();
        return Value::integer(-int_of(v));
      }
      case NodeKind::kBinary: {
        Value a = eval(*n.args[0]), b = eval(*n.args[1]);
        if (n.name == "~") {
          std::string s = to_str(a);
          s += to_str(b);
          check_string_size(s.size());
          return Value::string(std::move(s));
        }
        return arith(n.name, a, b);
      }
      case NodeKind::kCompare: {
        Value left = eval(*n.args[0]);
        for (size_t k = 0; k < n.ops.size(); ++k) {
          Value right = eval(*n.args[k + 1]);
          if (!compare(n.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case NodeKind::kAnd: {
        Value a = eval(*n.args[0]);
        return truthy(a) ? eval(*n.args[1]) : a;
      }
      case NodeKind::kOr: {
        Value a = eval(*n.args[0]);
        return truthy(a) ? a : eval(*n.args[1]);
      }
      case NodeKind::kNot:
        return Value::boolean(!truthy(eval(*n.args[0])));
      case NodeKind::kCond:
        if (truthy(eval(*n.args[0]))) return eval(*n.args[1]);
        if (n.args[2]) return eval(*n.args[2]);
        return Value::undefined(
            "the inline if-expression evaluated to false and no else section was defined.");
      case NodeKind::kGetAttr: {
        Value obj = eval(*n.args[0]);
        if (obj.is_undefined()) undefined_fail(obj);
        if (obj.kind == Kind::kNamespace || obj.kind == Kind::kLoop) {
          if (const Value* v = obj.dict->find(n.name)) return *v;
          return Value::undefined(
              fmt::format("'{}' has no attribute '{}'", type_name(obj), n.name));
        }
        return get_attr(obj, n.name);
      }
      case NodeKind::kGetItem: {
        Value obj = eval(*n.args[0]);
        Value key = eval(*n.args[1]);
        if (obj.is_undefined()) undefined_fail(obj);
        if (obj.kind == Kind::kNamespace || obj.kind == Kind::kLoop) {
          if (const Value* v = obj.dict->find(key)) return *v;
          return Value::undefined(
              fmt::format("'{}' has no attribute {}", type_name(obj), to_repr(key)));
        }
        return get_item(obj, key);
      }
      case NodeKind::kSlice: {
        Value obj = eval(*n.args[0]);
        Value parts[3];
        for (size_t k = 0; k < 3; ++k)
          if (n.args[k + 1]) parts[k] = eval(*n.args[k + 1]);
        return slice(obj, n.args[1] ? &parts[0] : nullptr, n.args[2] ? &parts[1] : nullptr,
                     n.args[3] ? &parts[2] : nullptr);
      }
      case NodeKind::kCall: {
        Value fn = eval(*n.args[0]);
        CallArgs a = eval_args(n, 1);
        return call(fn, a);
      }
      case NodeKind::kFilter: {
        Value in = eval(*n.args[0]);
        CallArgs a = eval_args(n, 1);
        return n.filter(*this, std::move(in), a);
      }
      case NodeKind::kTest: {
        Value in = eval(*n.args[0]);
        CallArgs a = eval_args(n, 1);
        bool r = n.test(*this, in, a);
        return Value::boolean(n.flag ? !r : r);
      }
      default:
        eval_fail("internal error: statement used as an expression");
    }
  }

  const Template& tmpl_;
  std::vector<Frame> frames_;
  std::string* out_ = nullptr;
  uint64_t iterations_ = 0;
  int depth_ = 0;
  int call_depth_ = 0;
};

Value call_value(Evaluator& ev, const Value& fn, CallArgs& args) {
  return ev.call(fn, args);
}
void count_iterations(Evaluator& ev, uint64_t n) {
  ev.count(n);
}

std::string render(const Template& t, const Value& context) {
  RenderBudget budget;
  uint64_t input = input_weight(context);
  budget.max_steps += kRenderStepsPerInputByte * input;
  budget.max_bytes += kRenderBytesPerInputByte * input;
  BudgetScope scope(&budget);
  Evaluator ev(t, context);
  try {
    return ev.run();
  } catch (const EvalError& e) {  // raised outside any node (should not happen): still an Error
    fail(ErrorCode::kFormat, "{}: {}", t.origin, e.message);
  }
}

}  // namespace nnpipe::jinja
