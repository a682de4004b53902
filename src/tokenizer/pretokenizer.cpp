#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "core/utf8.h"

namespace nnpipe {
namespace {

// Unicode White_Space = Oniguruma's \s for UTF-8 (checked against HF tokenizers: U+0085 and
// U+00A0 are spaces there, U+200B, U+FEFF, U+180E and U+001C..U+001F are not).
constexpr std::string_view kSpaceItems =
    R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Code points PCRE2 10.42's tables leave out of \p{N} although Oniguruma (Unicode 15) has them
// there: the Kaktovik numerals (found by the every-code-point conformance test).
constexpr std::string_view kExtraNumbers = R"(\x{1D2C0}-\x{1D2D3})";

pcre2_code* code_of(void* p) {
  return static_cast<pcre2_code*>(p);
}

}  // namespace

std::string onig_to_pcre2(std::string_view p, const std::string& origin) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      ++i;
      if (e == 's') {
        out += in_class ? std::string(kSpaceItems) : "[" + std::string(kSpaceItems) + "]";
      } else if (e == 'p' && p.substr(i + 1, 3) == "{N}") {
        i += 3;
        std::string items = R"(\p{N})" + std::string(kExtraNumbers);
        out += in_class ? items : "[" + items + "]";
      } else if (e == 'S') {
        if (in_class)
          fail(ErrorCode::kUnsupported, "{}: \\S inside a character class is not supported",
               origin);
        out += "[^" + std::string(kSpaceItems) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      // POSIX bracket [:name:] stays as is.
      size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == '[')
      fail(ErrorCode::kUnsupported, "{}: nested character classes are not supported", origin);
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

SplitPretokenizer::SplitPretokenizer(std::string_view pattern, const std::string& origin)
    : pattern_(pattern) {
  std::string translated = onig_to_pcre2(pattern, origin);
  int err = 0;
  PCRE2_SIZE off = 0;
  // MULTILINE: in Oniguruma's Ruby syntax (HF's default) ^ and $ are line anchors.
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(ErrorCode::kFormat, "{}: invalid regex at offset {}: {}", origin, off,
         reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  code_ = code;
}

SplitPretokenizer::~SplitPretokenizer() {
  if (code_) pcre2_code_free(code_of(code_));
}

SplitPretokenizer::SplitPretokenizer(SplitPretokenizer&& o) noexcept
    : pattern_(std::move(o.pattern_)), code_(o.code_) {
  o.code_ = nullptr;
}

SplitPretokenizer& SplitPretokenizer::operator=(SplitPretokenizer&& o) noexcept {
  if (this != &o) {
    if (code_) pcre2_code_free(code_of(code_));
    pattern_ = std::move(o.pattern_);
    code_ = o.code_;
    o.code_ = nullptr;
  }
  return *this;
}

std::vector<std::pair<size_t, size_t>> SplitPretokenizer::split_pieces(
    std::string_view text) const {
  if (size_t bad = utf8::find_invalid(text); bad != std::string_view::npos)
    fail(ErrorCode::kInvalidArgument, "pre-tokenizer input is not valid UTF-8 (byte {})", bad);
  std::vector<std::pair<size_t, size_t>> out;
  split_valid(text, out);
  return out;
}

void SplitPretokenizer::split_valid(std::string_view text,
                                    std::vector<std::pair<size_t, size_t>>& out) const {
  struct MatchData {  // one per call; a JIT stack only if the default one overflows
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    pcre2_match_context* mc = nullptr;
    pcre2_jit_stack* js = nullptr;
    ~MatchData() {
      pcre2_match_data_free(md);
      if (mc) pcre2_match_context_free(mc);
      if (js) pcre2_jit_stack_free(js);
    }
  } m;
  if (!m.md) fail(ErrorCode::kInternal, "out of memory (pcre2_match_data_create)");
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t prev = 0, start = 0;
  while (start < text.size()) {
    int rc =
        pcre2_match(code_of(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK, m.md, m.mc);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !m.js) {
      m.js = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
      m.mc = pcre2_match_context_create(nullptr);
      if (!m.js || !m.mc) fail(ErrorCode::kInternal, "out of memory (pcre2 JIT stack)");
      pcre2_jit_stack_assign(m.mc, nullptr, m.js);
      continue;
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail(ErrorCode::kInternal, "pre-tokenizer regex failed: {}",
           reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
    size_t b = ov[0], e = ov[1];
    if (b > prev) out.emplace_back(prev, b);
    if (e > b) {
      out.emplace_back(b, e);
      prev = start = e;
    } else {  // empty match: Oniguruma's find_iter steps one character on
      bool complete;
      start = b + utf8::valid_prefix(text, b, &complete);
      prev = b;
    }
  }
  if (prev < text.size()) out.emplace_back(prev, text.size());
}

}  // namespace nnpipe
