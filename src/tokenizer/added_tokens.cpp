#include "tokenizer/added_tokens.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

#include "core/utf8.h"

namespace nnpipe {
namespace {

// Rust's char::is_whitespace (Unicode White_Space), which HF uses for lstrip/rstrip.
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust's char::is_alphanumeric (single_word): the Unicode Alphabetic property (letters plus
// Other_Alphabetic, e.g. Indic vowel signs) or Numeric. utf8proc has no Alphabetic, PCRE2 does.
bool is_alnum(char32_t c) {
  static pcre2_code* const re = [] {
    int err;
    PCRE2_SIZE off;
    const char* pat = R"(^[\p{Alphabetic}\p{N}\x{1D2C0}-\x{1D2D3}])";
    pcre2_code* r = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat), PCRE2_ZERO_TERMINATED,
                                  PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!r) fail(ErrorCode::kInternal, "cannot compile the Alphabetic class (pcre2 error {})", err);
    return r;
  }();
  std::string u;
  utf8::append(u, c);
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  if (!md) fail(ErrorCode::kInternal, "out of memory (pcre2_match_data_create)");
  int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(u.data()), u.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  return rc > 0;
}

char32_t last_char(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  char32_t c;
  utf8::decode(s, i, &c);
  return c;
}

uint64_t edge_key(int32_t node, unsigned char b) {
  return (uint64_t(uint32_t(node)) << 8) | b;
}

}  // namespace

void AddedTokenMatcher::build(std::vector<AddedTokenSpec> tokens,
                              std::vector<std::string> patterns) {
  tokens_ = std::move(tokens);
  edges_.clear();
  terminal_.assign(1, -1);
  for (size_t t = 0; t < patterns.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;  // an empty token can never match
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      auto [it, inserted] =
          edges_.try_emplace(edge_key(node, b), static_cast<int32_t>(terminal_.size()));
      if (inserted) terminal_.push_back(-1);
      node = it->second;
    }
    terminal_[node] = static_cast<int32_t>(t);
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Piece>& out,
                              const std::function<bool(size_t)>* literal) const {
  size_t done = 0;  // text before this has been emitted
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    // Longest token starting at i.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      auto it = edges_.find(edge_key(node, static_cast<unsigned char>(text[j])));
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node] >= 0) best = terminal_[node], best_end = j + 1;
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedTokenSpec& tok = tokens_[best];
    size_t start = i, stop = best_end;
    i = best_end;  // matches never overlap, even when a rule below drops this one
    if (tok.special && literal && (*literal)(start)) continue;
    if (tok.single_word) {
      char32_t c;
      bool start_ok = start == 0 || !is_alnum(last_char(text.substr(0, start)));
      bool stop_ok = stop == text.size() || (utf8::decode(text, stop, &c), !is_alnum(c));
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t k = s - 1;
        while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        char32_t c;
        utf8::decode(text, k, &c);
        if (!is_space(c)) break;
        s = k;
      }
      start = std::max(s, done);
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        char32_t c;
        size_t n = utf8::decode(text, stop, &c);
        if (!is_space(c)) break;
        stop += n;
      }
      i = stop;
    }
    if (done < start) out.push_back({done, start, -1});
    out.push_back({start, stop, tok.id});
    done = stop;
  }
  if (done < text.size()) out.push_back({done, text.size(), -1});
}

}  // namespace nnpipe
