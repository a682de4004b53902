// jinja2's parser (jinja2/parser.py) for the statements and expressions chat templates use. The
// grammar and precedence follow jinja2 exactly (e.g. `-2 ** 2` is 4, filters bind tighter than
// arithmetic, `a if b` without else is undefined). Unknown tags, filters and tests are errors here,
// at parse time, as jinja2 reports them at compile time.
#include <initializer_list>

#include "core/error.h"
#include "tokenizer/jinja_lexer.h"

namespace nnpipe::jinja {
namespace {

NodePtr make(NodeKind kind, Pos pos) {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->pos = pos;
  return n;
}

class Parser {
 public:
  Parser(std::vector<Token> toks, std::string origin)
      : toks_(std::move(toks)), origin_(std::move(origin)) {}

  NodeList parse_root() {
    std::string ended;
    return parse_statements({}, ended);
  }

 private:
  // --- token helpers ---
  const Token& cur() const { return toks_[p_]; }
  const Token& peek(size_t n = 1) const { return toks_[std::min(p_ + n, toks_.size() - 1)]; }
  void next() {
    if (p_ + 1 < toks_.size()) ++p_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::kName && cur().text == name; }

  [[noreturn]] void error(Pos pos, const std::string& msg) const {
    fail(ErrorCode::kFormat, "{}:{}:{}: {}", origin_, pos.line, pos.column, msg);
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::kData:
        return "template data";
      case Tok::kVarBegin:
        return "'{{'";
      case Tok::kVarEnd:
        return "'}}'";
      case Tok::kBlockBegin:
        return "'{%'";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kEof:
        return "end of template";
      case Tok::kString:
        return "string literal";
      default:
        return "'" + t.text + "'";
    }
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    error(cur().pos, fmt::format("unexpected {}, expected {}", describe(cur()), expected));
  }
  void expect_op(const char* op) {
    if (!is_op(op)) unexpected(fmt::format("'{}'", op));
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) unexpected("a name");
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) unexpected("end of statement block");
    next();
  }

  struct DepthGuard {
    DepthGuard(Parser& p, Pos pos) : p_(p) {
      if (++p_.depth_ > kMaxParseDepth)
        p_.error(pos, fmt::format("template nested more than {} levels deep", kMaxParseDepth));
    }
    ~DepthGuard() { --p_.depth_; }
    Parser& p_;
  };
  // Operator chains (a + b + c ...) build trees as deep as they are long: count each link too, so
  // the evaluator's recursion over the tree stays bounded.
  struct ChainGuard {
    explicit ChainGuard(Parser& p) : p_(p) {}
    void step(Pos pos) {
      ++n_;
      if (++p_.depth_ > kMaxParseDepth)
        p_.error(pos, fmt::format("template nested more than {} levels deep", kMaxParseDepth));
    }
    ~ChainGuard() { p_.depth_ -= n_; }
    Parser& p_;
    int n_ = 0;
  };

  // --- statements ---

  // Parses until `{% <one of end_names>`; leaves the parser at that name, stored in `ended`.
  NodeList parse_statements(std::initializer_list<const char*> end_names, std::string& ended) {
    NodeList body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (end_names.size() == 0) return body;
        std::string names;
        for (const char* n : end_names)
          names += std::string(names.empty() ? "" : " or ") + "'" + n + "'";
        error(t.pos, fmt::format("unexpected end of template, expected {}", names));
      }
      if (t.type == Tok::kData) {
        auto n = make(NodeKind::kText, t.pos);
        n->name = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == Tok::kVarBegin) {
        next();
        auto n = make(NodeKind::kOutput, t.pos);
        n->args.push_back(parse_tuple(true, false, {}));
        if (cur().type != Tok::kVarEnd) unexpected("'}}'");
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::kBlockBegin) {
        next();
        if (cur().type == Tok::kName)
          for (const char* n : end_names)
            if (cur().text == n) {
              ended = n;
              next();
              return body;
            }
        body.push_back(parse_statement());
      } else {
        unexpected("template data or a tag");
      }
    }
  }

  NodeList parse_block_until(const char* end) {
    std::string ended;
    NodeList body = parse_statements({end}, ended);
    expect_block_end();
    return body;
  }

  NodePtr parse_statement() {
    const Token& t = cur();
    if (t.type != Tok::kName) error(t.pos, "tag name expected");
    DepthGuard guard(*this, t.pos);
    const std::string& tag = t.text;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "call") return parse_call_block();
    if (tag == "filter") return parse_filter_block();
    if (tag == "with") return parse_with();
    if (tag == "generation") {  // transformers' AssistantTracker: renders its body
      auto n = make(NodeKind::kScope, t.pos);
      next();
      expect_block_end();
      n->body = parse_block_until("endgeneration");
      return n;
    }
    if (tag == "break" || tag == "continue") {
      auto n = make(tag == "break" ? NodeKind::kBreak : NodeKind::kContinue, t.pos);
      if (loop_depth_ == 0) error(t.pos, fmt::format("'{}' outside of a loop", tag));
      next();
      expect_block_end();
      return n;
    }
    for (const char* unsupported : {"include", "import", "from", "extends", "block", "do",
                                    "autoescape", "trans", "pluralize"})
      if (tag == unsupported)
        error(t.pos,
              fmt::format("unsupported statement '{}' (not available to chat templates in nnpipe)",
                          tag));
    error(t.pos, fmt::format("unknown statement '{}'", tag));
  }

  NodePtr parse_if() {
    DepthGuard guard(*this, cur().pos);
    auto n = make(NodeKind::kIf, cur().pos);
    next();
    n->args.push_back(parse_tuple(false, false, {}));
    expect_block_end();
    std::string ended;
    n->body = parse_statements({"elif", "else", "endif"}, ended);
    if (ended == "elif") {
      --p_;  // re-read "elif" as a nested if
      n->else_body.push_back(parse_if());
      return n;
    }
    expect_block_end();
    if (ended == "else") n->else_body = parse_block_until("endif");
    return n;
  }

  // Loop and set targets: a name or a tuple of names.
  void parse_targets(Node& n, const char* end_name) {
    n.ops.push_back(expect_name());
    while (is_op(",")) {
      n.flag = true;
      next();
      if (cur().type != Tok::kName || (end_name && cur().text == end_name)) break;
      n.ops.push_back(expect_name());
    }
  }

  NodePtr parse_for() {
    auto n = make(NodeKind::kFor, cur().pos);
    next();
    bool paren = is_op("(");
    if (paren) next();
    parse_targets(*n, "in");
    if (paren) expect_op(")");
    if (!is_name("in")) unexpected("'in'");
    next();
    n->args.push_back(parse_tuple(false, false, {"recursive", "if"}));
    if (is_name("if")) {
      next();
      n->args.push_back(parse_expression(true));
    } else {
      n->args.push_back(nullptr);
    }
    if (is_name("recursive")) error(cur().pos, "unsupported loop modifier 'recursive'");
    expect_block_end();
    ++loop_depth_;
    std::string ended;
    n->body = parse_statements({"endfor", "else"}, ended);
    --loop_depth_;
    expect_block_end();
    if (ended == "else") n->else_body = parse_block_until("endfor");
    return n;
  }

  NodePtr parse_set() {
    Pos pos = cur().pos;
    next();
    auto n = make(NodeKind::kSet, pos);
    if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == ".") {
      n->name = expect_name();  // namespace attribute: `set ns.attr = ...`
      next();
      n->ops.push_back(expect_name());
    } else {
      parse_targets(*n, nullptr);
    }
    if (is_op("=")) {
      next();
      n->args.push_back(parse_tuple(true, false, {}));
      expect_block_end();
      return n;
    }
    if (n->flag) unexpected("'='");
    n->kind = NodeKind::kSetBlock;
    if (is_op("|")) n->args.push_back(parse_filters(nullptr));
    expect_block_end();
    n->body = parse_block_until("endset");
    return n;
  }

  void parse_params(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (!n.ops.empty()) expect_op(",");
      if (is_op(")")) break;
      n.ops.push_back(expect_name());
      if (is_op("=")) {
        next();
        n.args.push_back(parse_expression(true));
      } else {
        n.args.push_back(nullptr);
      }
    }
    next();
  }

  NodePtr parse_macro() {
    auto n = make(NodeKind::kMacro, cur().pos);
    next();
    n->name = expect_name();
    parse_params(*n);
    expect_block_end();
    int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = parse_block_until("endmacro");
    loop_depth_ = saved;
    return n;
  }

  NodePtr parse_call_block() {
    auto n = make(NodeKind::kCallBlock, cur().pos);
    next();
    if (is_op("(")) parse_params(*n);  // the caller's own parameters
    NodePtr call = parse_expression(true);
    if (call->kind != NodeKind::kCall) error(call->pos, "expected a call after 'call'");
    n->else_body.push_back(std::move(call));
    expect_block_end();
    n->body = parse_block_until("endcall");
    return n;
  }

  NodePtr parse_filter_block() {
    auto n = make(NodeKind::kFilterBlock, cur().pos);
    next();
    if (cur().type != Tok::kName) unexpected("a filter name");
    --p_;  // parse_filters expects to sit on '|'
    n->args.push_back(parse_filters(nullptr));
    expect_block_end();
    n->body = parse_block_until("endfilter");
    return n;
  }

  NodePtr parse_with() {
    auto n = make(NodeKind::kWith, cur().pos);
    next();
    while (cur().type != Tok::kBlockEnd) {
      if (!n->ops.empty()) expect_op(",");
      n->ops.push_back(expect_name());
      expect_op("=");
      n->args.push_back(parse_expression(true));
    }
    next();
    n->body = parse_block_until("endwith");
    return n;
  }

  // --- expressions ---

  bool at_tuple_end(std::initializer_list<const char*> extra_end) const {
    const Token& t = cur();
    if (t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd || t.type == Tok::kEof) return true;
    if (t.type == Tok::kOp && t.text == ")") return true;
    if (t.type == Tok::kName)
      for (const char* e : extra_end)
        if (t.text == e) return true;
    return false;
  }

  NodePtr parse_tuple(bool with_condexpr, bool explicit_parens,
                      std::initializer_list<const char*> extra_end) {
    Pos pos = cur().pos;
    NodeList items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (at_tuple_end(extra_end)) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) unexpected("an expression");
    }
    auto n = make(NodeKind::kTuple, pos);
    n->args = std::move(items);
    return n;
  }

  NodePtr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  NodePtr parse_condexpr() {
    DepthGuard guard(*this, cur().pos);
    NodePtr expr1 = parse_or();
    ChainGuard chain(*this);
    while (is_name("if")) {
      chain.step(cur().pos);
      auto n = make(NodeKind::kCond, cur().pos);
      next();
      NodePtr cond = parse_or();
      NodePtr other;
      if (is_name("else")) {
        next();
        other = parse_condexpr();
      }
      n->args.push_back(std::move(cond));
      n->args.push_back(std::move(expr1));
      n->args.push_back(std::move(other));
      expr1 = std::move(n);
    }
    return expr1;
  }

  NodePtr binary(NodeKind kind, std::string op, NodePtr l, NodePtr r, Pos pos) {
    auto n = make(kind, pos);
    n->name = std::move(op);
    n->args.push_back(std::move(l));
    n->args.push_back(std::move(r));
    return n;
  }

  NodePtr parse_or() {
    NodePtr left = parse_and();
    ChainGuard chain(*this);
    while (is_name("or")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      next();
      left = binary(NodeKind::kOr, "or", std::move(left), parse_and(), pos);
    }
    return left;
  }

  NodePtr parse_and() {
    NodePtr left = parse_not();
    ChainGuard chain(*this);
    while (is_name("and")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      next();
      left = binary(NodeKind::kAnd, "and", std::move(left), parse_not(), pos);
    }
    return left;
  }

  NodePtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this, cur().pos);
      auto n = make(NodeKind::kNot, cur().pos);
      next();
      n->args.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }

  NodePtr parse_compare() {
    Pos pos = cur().pos;
    NodePtr expr = parse_math1();
    auto n = make(NodeKind::kCompare, pos);
    n->args.push_back(std::move(expr));
    ChainGuard chain(*this);
    while (true) {
      chain.step(cur().pos);
      if (cur().type == Tok::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        n->ops.push_back(cur().text);
        next();
      } else if (is_name("in")) {
        n->ops.push_back("in");
        next();
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        n->ops.push_back("notin");
        next();
        next();
      } else {
        break;
      }
      n->args.push_back(parse_math1());
    }
    if (n->ops.empty()) return std::move(n->args[0]);
    return n;
  }

  NodePtr parse_math1() {
    NodePtr left = parse_concat();
    ChainGuard chain(*this);
    while (is_op("+") || is_op("-")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      std::string op = cur().text;
      next();
      left = binary(NodeKind::kBinary, op, std::move(left), parse_concat(), pos);
    }
    return left;
  }

  NodePtr parse_concat() {
    NodePtr left = parse_math2();
    ChainGuard chain(*this);
    while (is_op("~")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      next();
      left = binary(NodeKind::kBinary, "~", std::move(left), parse_math2(), pos);
    }
    return left;
  }

  NodePtr parse_math2() {
    NodePtr left = parse_pow();
    ChainGuard chain(*this);
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      std::string op = cur().text;
      next();
      left = binary(NodeKind::kBinary, op, std::move(left), parse_pow(), pos);
    }
    return left;
  }

  NodePtr parse_pow() {
    NodePtr left = parse_unary(true);
    ChainGuard chain(*this);
    while (is_op("**")) {
      chain.step(cur().pos);
      Pos pos = cur().pos;
      next();
      left = binary(NodeKind::kBinary, "**", std::move(left), parse_unary(true), pos);
    }
    return left;
  }

  NodePtr parse_unary(bool with_filter) {
    DepthGuard guard(*this, cur().pos);
    NodePtr node;
    if (is_op("-") || is_op("+")) {
      node = make(NodeKind::kUnary, cur().pos);
      node->name = cur().text;
      next();
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  NodePtr parse_primary() {
    const Token& t = cur();
    Pos pos = t.pos;
    switch (t.type) {
      case Tok::kName: {
        auto n = make(NodeKind::kLiteral, pos);
        if (t.text == "true" || t.text == "True")
          n->literal = Value::boolean(true);
        else if (t.text == "false" || t.text == "False")
          n->literal = Value::boolean(false);
        else if (t.text == "none" || t.text == "None")
          n->literal = Value::none();
        else {
          n->kind = NodeKind::kName;
          n->name = t.text;
        }
        next();
        return n;
      }
      case Tok::kString: {
        std::string s;
        while (cur().type == Tok::kString) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        auto n = make(NodeKind::kLiteral, pos);
        n->literal = Value::string(std::move(s));
        return n;
      }
      case Tok::kInt:
      case Tok::kFloat: {
        auto n = make(NodeKind::kLiteral, pos);
        n->literal = t.type == Tok::kInt ? Value::integer(t.ival) : Value::number(t.fval);
        next();
        return n;
      }
      case Tok::kOp:
        if (t.text == "(") {
          next();
          NodePtr n = parse_tuple(true, true, {});
          expect_op(")");
          return n;
        }
        if (t.text == "[") {
          auto n = make(NodeKind::kList, pos);
          next();
          while (!is_op("]")) {
            if (!n->args.empty()) expect_op(",");
            if (is_op("]")) break;
            n->args.push_back(parse_expression(true));
          }
          next();
          return n;
        }
        if (t.text == "{") {
          auto n = make(NodeKind::kDict, pos);
          next();
          while (!is_op("}")) {
            if (!n->args.empty()) expect_op(",");
            if (is_op("}")) break;
            n->args.push_back(parse_expression(true));
            expect_op(":");
            n->args.push_back(parse_expression(true));
          }
          next();
          return n;
        }
        break;
      default:
        break;
    }
    unexpected("an expression");
  }

  NodePtr parse_postfix(NodePtr node) {
    ChainGuard chain(*this);
    while (true) {
      chain.step(cur().pos);
      if (is_op(".") || is_op("["))
        node = parse_subscript(std::move(node));
      else if (is_op("("))
        node = parse_call(std::move(node));
      else
        return node;
    }
  }

  NodePtr parse_filter_expr(NodePtr node) {
    ChainGuard chain(*this);
    while (true) {
      chain.step(cur().pos);
      if (is_op("|"))
        node = parse_filters(std::move(node), true);
      else if (is_name("is"))
        node = parse_test(std::move(node));
      else if (is_op("("))
        node = parse_call(std::move(node));
      else
        return node;
    }
  }

  NodePtr parse_subscript(NodePtr node) {
    DepthGuard guard(*this, cur().pos);
    Pos pos = cur().pos;
    if (is_op(".")) {
      next();
      if (cur().type == Tok::kName) {
        auto n = make(NodeKind::kGetAttr, pos);
        n->name = cur().text;
        n->args.push_back(std::move(node));
        next();
        return n;
      }
      if (cur().type != Tok::kInt) unexpected("an attribute name");
      auto n = make(NodeKind::kGetItem, pos);
      n->args.push_back(std::move(node));
      auto idx = make(NodeKind::kLiteral, cur().pos);
      idx->literal = Value::integer(cur().ival);
      n->args.push_back(std::move(idx));
      next();
      return n;
    }
    next();  // '['
    NodeList subs;
    while (!is_op("]")) {
      if (!subs.empty()) expect_op(",");
      if (is_op("]")) break;
      subs.push_back(parse_subscribed());
    }
    next();
    if (subs.empty()) error(pos, "expected a subscript");
    NodePtr key;
    if (subs.size() == 1) {
      key = std::move(subs[0]);
    } else {
      key = make(NodeKind::kTuple, pos);
      key->args = std::move(subs);
    }
    if (key->kind == NodeKind::kSlice) {  // the slice node takes the object as its first operand
      key->args.insert(key->args.begin(), std::move(node));
      return key;
    }
    auto n = make(NodeKind::kGetItem, pos);
    n->args.push_back(std::move(node));
    n->args.push_back(std::move(key));
    return n;
  }

  NodePtr parse_subscribed() {
    Pos pos = cur().pos;
    NodeList parts;
    if (is_op(":")) {
      next();
      parts.push_back(nullptr);
    } else {
      NodePtr node = parse_expression(true);
      if (!is_op(":")) return node;
      next();
      parts.push_back(std::move(node));
    }
    if (is_op(":"))
      parts.push_back(nullptr);
    else if (!is_op("]") && !is_op(","))
      parts.push_back(parse_expression(true));
    else
      parts.push_back(nullptr);
    if (is_op(":")) {
      next();
      if (!is_op("]") && !is_op(","))
        parts.push_back(parse_expression(true));
      else
        parts.push_back(nullptr);
    } else {
      parts.push_back(nullptr);
    }
    auto n = make(NodeKind::kSlice, pos);
    n->args = std::move(parts);
    return n;
  }

  // Call arguments into n->args (after any operands already there) and n->kwargs.
  void parse_call_args(Node& n) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) error(cur().pos, "unsupported: *args and **kwargs in calls");
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = cur().text;
        next();
        next();
        n.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!n.kwargs.empty()) error(cur().pos, "positional argument follows keyword argument");
        n.args.push_back(parse_expression(true));
      }
    }
    next();
  }

  NodePtr parse_call(NodePtr node) {
    DepthGuard guard(*this, cur().pos);
    auto n = make(NodeKind::kCall, cur().pos);
    n->args.push_back(std::move(node));
    parse_call_args(*n);
    return n;
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      std::string part = expect_name();  // (two appends: g++ 12 -Wrestrict false positive)
      name.push_back('.');
      name.append(part);
    }
    return name;
  }

  // `| f(args) | g ...` applied to `node` (nullptr: the body of a filter block / set block).
  NodePtr parse_filters(NodePtr node, bool single = false) {
    ChainGuard chain(*this);
    do {
      chain.step(cur().pos);
      next();  // '|' (or the `filter` tag name)
      Pos pos = cur().pos;
      auto n = make(NodeKind::kFilter, pos);
      n->name = dotted_name();
      n->filter = find_filter(n->name);
      if (!n->filter) error(pos, fmt::format("unknown filter '{}'", n->name));
      n->args.push_back(std::move(node));
      if (is_op("(")) parse_call_args(*n);
      node = std::move(n);
    } while (!single && is_op("|"));
    return node;
  }

  NodePtr parse_test(NodePtr node) {
    DepthGuard guard(*this, cur().pos);
    next();  // 'is'
    bool negated = false;
    if (is_name("not")) {
      negated = true;
      next();
    }
    Pos pos = cur().pos;
    auto n = make(NodeKind::kTest, pos);
    n->name = dotted_name();
    n->flag = negated;
    n->test = find_test(n->name);
    if (!n->test) error(pos, fmt::format("unknown test '{}'", n->name));
    n->args.push_back(std::move(node));
    const Token& t = cur();
    if (is_op("(")) {
      parse_call_args(*n);
    } else if ((t.type == Tok::kName || t.type == Tok::kString || t.type == Tok::kInt ||
                t.type == Tok::kFloat ||
                (t.type == Tok::kOp && (t.text == "(" || t.text == "[" || t.text == "{"))) &&
               !(t.type == Tok::kName && (t.text == "else" || t.text == "or" || t.text == "and"))) {
      if (is_name("is")) error(t.pos, "You cannot chain multiple tests with is");
      n->args.push_back(parse_postfix(parse_primary()));  // `x is divisibleby 3`
    }
    return n;
  }

  std::vector<Token> toks_;
  std::string origin_;
  size_t p_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::unique_ptr<Template> parse_template(const std::string& source, const std::string& origin) {
  auto t = std::make_unique<Template>();
  t->origin = origin;
  Parser parser(lex(source, origin), origin);
  t->body = parser.parse_root();
  return t;
}

}  // namespace nnpipe::jinja
