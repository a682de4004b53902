// jinja2's lexer (jinja2/lexer.py) for the environment transformers builds: default delimiters,
// trim_blocks=True, lstrip_blocks=True, no line statements, keep_trailing_newline=False.
#include "tokenizer/jinja_lexer.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace nnpipe::jinja {
namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || is_digit(c);
}
bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Python's str.rstrip() (all Unicode whitespace).
std::string py_rstrip(const std::string& s) {
  std::u32string u = utf8_decode(s);
  size_t n = u.size();
  while (n > 0 && py_isspace(u[n - 1])) --n;
  return utf8_encode(std::u32string_view(u).substr(0, n));
}

bool all_py_space(const std::string& s) {
  if (s.empty()) return false;  // whitespace_re is \s+: needs at least one character
  for (char32_t c : utf8_decode(s))
    if (!py_isspace(c)) return false;
  return true;
}

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& origin) : origin_(origin) {
    // Newlines: \r\n and \r become \n; one trailing newline is dropped
    // (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
      if (source[k] == '\r') {
        src_ += '\n';
        if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      } else {
        src_ += source[k];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // did the previous match end with '\n'?
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_data(src_.substr(pos), pos);
        break;
      }
      char kind = src_[tag + 1];
      size_t after = tag + 2;
      char sign =
          after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
      if (sign) ++after;
      size_t raw_end = kind == '%' ? match_raw_begin(after) : std::string::npos;
      std::string text =
          strip_before(src_.substr(pos, tag - pos), sign, kind != '{', line_starting);
      emit_data(text, pos);
      if (raw_end != std::string::npos) {
        pos = lex_raw(raw_end, line_starting);
      } else if (kind == '#') {
        pos = lex_comment(tag, after, line_starting);
      } else {
        pos = lex_tag(tag, after, kind, line_starting);
      }
    }
    toks_.push_back(Token{Tok::kEof, "", pos_of(src_.size())});
    return std::move(toks_);
  }

 private:
  [[noreturn]] void error(size_t off, const std::string& msg) {
    Pos p = pos_of(off);
    fail(ErrorCode::kFormat, "{}:{}:{}: {}", origin_, p.line, p.column, msg);
  }

  // Columns count code points from the line start. Tokens arrive in source order, so counting on
  // from the previous token keeps this linear even for a template written on one long line.
  Pos pos_of(size_t off) {
    size_t line = static_cast<size_t>(
        std::upper_bound(line_starts_.begin(), line_starts_.end(), off) - line_starts_.begin());
    size_t start = line_starts_[line - 1];
    if (line != cache_line_ || off < cache_off_) {
      cache_line_ = line;
      cache_off_ = start;
      cache_column_ = 1;
    }
    for (size_t k = cache_off_; k < off && k < src_.size(); ++k)
      if ((static_cast<unsigned char>(src_[k]) & 0xC0) != 0x80) ++cache_column_;
    cache_off_ = off;
    return Pos{static_cast<uint32_t>(line), static_cast<uint32_t>(cache_column_)};
  }

  void emit_data(const std::string& text, size_t off) {
    if (!text.empty()) toks_.push_back(Token{Tok::kData, text, pos_of(off)});
  }

  size_t find_tag(size_t from) const {
    for (size_t k = src_.find('{', from); k != std::string::npos && k + 1 < src_.size();
         k = src_.find('{', k + 1)) {
      char c = src_[k + 1];
      if (c == '{' || c == '%' || c == '#') return k;
    }
    return std::string::npos;
  }

  // `-` strips all whitespace before the tag; otherwise lstrip_blocks strips spaces before a block
  // or comment tag that starts its line (jinja2 OptionalLStrip).
  static std::string strip_before(std::string text, char sign, bool block_or_comment,
                                  bool line_starting) {
    if (sign == '-') return py_rstrip(text);
    if (sign != '+' && block_or_comment) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) && all_py_space(text.substr(l_pos))) text.resize(l_pos);
    }
    return text;
  }

  size_t skip_ws(size_t k) const {
    while (k < src_.size() && is_ascii_space(src_[k])) ++k;
    return k;
  }
  size_t skip_py_ws(size_t k) const {  // \s* in a Python regex: Unicode whitespace
    while (k < src_.size()) {
      if (is_ascii_space(src_[k]) || (src_[k] >= 0x1c && src_[k] <= 0x1f)) {
        ++k;
        continue;
      }
      if (static_cast<unsigned char>(src_[k]) < 0x80) break;
      size_t n = 1;
      while (k + n < src_.size() && (static_cast<unsigned char>(src_[k + n]) & 0xC0) == 0x80) ++n;
      std::u32string u = utf8_decode(std::string_view(src_).substr(k, n));
      if (u.size() != 1 || !py_isspace(u[0])) break;
      k += n;
    }
    return k;
  }

  // `{%[-+]? raw [-]%}`: the end offset of the raw_begin match, or npos.
  size_t match_raw_begin(size_t k) const {
    k = skip_py_ws(k);
    if (src_.compare(k, 3, "raw") != 0) return std::string::npos;
    k = skip_py_ws(k + 3);
    if (src_.compare(k, 3, "-%}") == 0) return skip_py_ws(k + 3);
    if (src_.compare(k, 2, "%}") == 0) return k + 2;
    return std::string::npos;
  }

  // Block/comment end: "+%}" keeps what follows, "-%}" eats all whitespace, "%}" one newline.
  size_t end_suffix(size_t k, char sign, size_t closer_end, bool& line_starting) const {
    size_t e = closer_end;
    if (sign == '-')
      e = skip_py_ws(closer_end);
    else if (sign == 0 && e < src_.size() && src_[e] == '\n')
      ++e;
    line_starting = e > k && src_[e - 1] == '\n';
    return e;
  }

  size_t lex_raw(size_t from, bool& line_starting) {
    line_starting = from > 0 && src_[from - 1] == '\n';
    for (size_t k = src_.find("{%", from); k != std::string::npos; k = src_.find("{%", k + 1)) {
      size_t a = k + 2;
      char sign = a < src_.size() && (src_[a] == '-' || src_[a] == '+') ? src_[a] : 0;
      if (sign) ++a;
      a = skip_py_ws(a);
      if (src_.compare(a, 6, "endraw") != 0) continue;
      a = skip_py_ws(a + 6);
      char esign = 0;
      if (a < src_.size() && (src_[a] == '-' || src_[a] == '+')) esign = src_[a++];
      if (src_.compare(a, 2, "%}") != 0) continue;
      emit_data(strip_before(src_.substr(from, k - from), sign, true, line_starting), from);
      return end_suffix(k, esign, a + 2, line_starting);
    }
    error(from, "Missing end of raw directive");
  }

  size_t lex_comment(size_t tag, size_t from, bool& line_starting) {
    for (size_t k = src_.find("#}", from); k != std::string::npos; k = src_.find("#}", k + 1)) {
      char sign = k > from && (src_[k - 1] == '-' || src_[k - 1] == '+') ? src_[k - 1] : 0;
      return end_suffix(tag, sign, k + 2, line_starting);
    }
    error(tag, "Missing end of comment tag");
  }

  size_t lex_tag(size_t tag, size_t k, char kind, bool& line_starting) {
    bool block = kind == '%';
    toks_.push_back(Token{block ? Tok::kBlockBegin : Tok::kVarBegin, "", pos_of(tag)});
    std::vector<char> balance;
    while (true) {
      if (k >= src_.size())
        error(tag, block ? "unexpected end of template, expected '%}'"
                         : "unexpected end of template, expected '}}'");
      if (balance.empty()) {  // end tags only count when brackets are balanced
        if (block) {
          if (src_.compare(k, 3, "+%}") == 0 || src_.compare(k, 3, "-%}") == 0) {
            toks_.push_back(Token{Tok::kBlockEnd, "", pos_of(k)});
            return end_suffix(tag, src_[k], k + 3, line_starting);
          }
          if (src_.compare(k, 2, "%}") == 0) {
            toks_.push_back(Token{Tok::kBlockEnd, "", pos_of(k)});
            return end_suffix(tag, 0, k + 2, line_starting);
          }
        } else {
          if (src_.compare(k, 3, "-}}") == 0) {
            toks_.push_back(Token{Tok::kVarEnd, "", pos_of(k)});
            size_t e = skip_py_ws(k + 3);
            line_starting = src_[e - 1] == '\n';
            return e;
          }
          if (src_.compare(k, 2, "}}") == 0) {
            toks_.push_back(Token{Tok::kVarEnd, "", pos_of(k)});
            line_starting = false;
            return k + 2;
          }
        }
      }
      char c = src_[k];
      if (is_ascii_space(c) || static_cast<unsigned char>(c) >= 0x80) {
        size_t e = skip_py_ws(k);
        if (e == k)
          error(k, fmt::format("unexpected char '{}'",
                               utf8_encode(utf8_decode(src_.substr(k, 4)).substr(0, 1))));
        k = e;
      } else if (is_digit(c)) {
        k = lex_number(k);
      } else if (is_name_start(c)) {
        size_t e = k;
        while (e < src_.size() && is_name_char(src_[e])) ++e;
        toks_.push_back(Token{Tok::kName, src_.substr(k, e - k), pos_of(k)});
        k = e;
      } else if (c == '\'' || c == '"') {
        k = lex_string(k);
      } else {
        k = lex_operator(k, balance);
      }
    }
  }

  size_t lex_number(size_t k) {
    size_t start = k;
    auto digits = [&](size_t& e, auto pred) {  // digits with single underscores between them
      size_t s = e;
      while (e < src_.size() && (pred(src_[e]) || (src_[e] == '_' && e > s && e + 1 < src_.size() &&
                                                   pred(src_[e + 1]))))
        ++e;
      return e > s;
    };
    std::string clean;
    auto strip_underscores = [&](size_t a, size_t b) {
      std::string s;
      for (size_t x = a; x < b; ++x)
        if (src_[x] != '_') s += src_[x];
      return s;
    };
    if (src_[k] == '0' && k + 1 < src_.size() &&
        std::string_view("xXoObB").find(src_[k + 1]) != std::string_view::npos) {
      char base_c = static_cast<char>(src_[k + 1] | 0x20);
      int base = base_c == 'x' ? 16 : base_c == 'o' ? 8 : 2;
      size_t e = k + 2;
      if (e < src_.size() && src_[e] == '_') ++e;
      auto pred = [base](char c) {
        if (base == 16) return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
        return c >= '0' && c < static_cast<char>('0' + base);
      };
      if (!digits(e, pred)) error(k, "invalid integer literal");
      std::string d = strip_underscores(k + 2, e);
      errno = 0;
      unsigned long long v = std::strtoull(d.c_str(), nullptr, base);
      if (errno || v > static_cast<unsigned long long>(INT64_MAX))
        error(k, "integer literal too large");
      toks_.push_back(Token{Tok::kInt, src_.substr(k, e - k), pos_of(k), static_cast<int64_t>(v)});
      return e;
    }
    size_t e = k;
    digits(e, is_digit);
    bool is_float = false;
    bool after_dot = start > 0 && src_[start - 1] == '.';  // (?<!\.): `a.0.1` is attribute access
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' && is_digit(src_[e + 1])) {
      ++e;
      digits(e, is_digit);
      is_float = true;
    }
    if (!after_dot && e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t x = e + 1;
      if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
      if (x < src_.size() && is_digit(src_[x])) {
        digits(x, is_digit);
        e = x;
        is_float = true;
      }
    }
    std::string d = strip_underscores(start, e);
    Token t{is_float ? Tok::kFloat : Tok::kInt, src_.substr(start, e - start), pos_of(start)};
    if (is_float) {
      t.fval = std::strtod(d.c_str(), nullptr);
    } else {
      errno = 0;
      unsigned long long v = std::strtoull(d.c_str(), nullptr, 10);
      if (errno || v > static_cast<unsigned long long>(INT64_MAX))
        error(start, "integer literal too large");
      t.ival = static_cast<int64_t>(v);
    }
    toks_.push_back(std::move(t));
    return e;
  }

  static int hexval(char c) {
    if (is_digit(c)) return c - '0';
    c = static_cast<char>(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  }

  // A quoted literal, unescaped like Python's "unicode-escape" codec (what jinja2 applies).
  size_t lex_string(size_t k) {
    char q = src_[k];
    size_t e = k + 1;
    while (e < src_.size() && src_[e] != q) e += src_[e] == '\\' ? 2 : 1;
    if (e >= src_.size()) error(k, "unexpected char '" + std::string(1, q) + "'");
    std::string out;
    for (size_t x = k + 1; x < e; ++x) {
      char c = src_[x];
      if (c != '\\') {
        out += c;
        continue;
      }
      char n = src_[++x];
      switch (n) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          size_t len = n == 'x' ? 2 : n == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (size_t d = 1; d <= len; ++d) {
            int h = x + d < e ? hexval(src_[x + d]) : -1;
            if (h < 0) error(x - 1, fmt::format("invalid \\{} escape in string literal", n));
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            error(x - 1, "invalid code point in string literal");
          utf8_append(out, cp);
          x += len;
          break;
        }
        case 'N':
          error(x - 1, "\\N{...} escapes are not supported");
        default:
          if (n >= '0' && n <= '7') {
            uint32_t cp = 0;
            size_t d = 0;
            while (d < 3 && x + d < e && src_[x + d] >= '0' && src_[x + d] <= '7')
              cp = cp * 8 + static_cast<uint32_t>(src_[x + d++] - '0');
            utf8_append(out, cp);
            x += d - 1;
          } else {  // unknown escapes stay as written
            out += '\\';
            out += n;
          }
      }
    }
    toks_.push_back(Token{Tok::kString, std::move(out), pos_of(k)});
    return e + 1;
  }

  size_t lex_operator(size_t k, std::vector<char>& balance) {
    static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                       "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                       ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    for (const char* op : kOps) {
      size_t n = std::char_traits<char>::length(op);
      if (src_.compare(k, n, op) != 0) continue;
      char c = op[0];
      if (n == 1 && (c == '(' || c == '[' || c == '{'))
        balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      if (n == 1 && (c == ')' || c == ']' || c == '}')) {
        if (balance.empty()) error(k, fmt::format("unexpected '{}'", c));
        if (balance.back() != c)
          error(k, fmt::format("unexpected '{}', expected '{}'", c, balance.back()));
        balance.pop_back();
      }
      toks_.push_back(Token{Tok::kOp, op, pos_of(k)});
      return k + n;
    }
    error(k, fmt::format("unexpected char '{}'", src_[k]));
  }

  std::string origin_;
  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> toks_;
  size_t cache_line_ = 0, cache_off_ = 0, cache_column_ = 1;  // pos_of's last answer
};

}  // namespace

std::vector<Token> lex(const std::string& source, const std::string& origin) {
  return Lexer(source, origin).run();
}

}  // namespace nnpipe::jinja
