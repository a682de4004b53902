// The Split pre-tokenizer of tokenizer.json (behavior "Isolated", invert false): matches of the
// regex become pieces and so do the gaps between them. HF tokenizers runs the pattern with
// Oniguruma; we use PCRE2 (UTF + UCP) after rewriting the constructs whose meaning differs (see
// pretokenizer.cpp), so the pieces are the same.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nnpipe {

// Qwen's pattern (tokenizer.json pre_tokenizer.pretokenizers[0].pattern.Regex).
inline constexpr std::string_view kQwenSplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class SplitPretokenizer {
 public:
  // Compiles `pattern` (Oniguruma syntax as used in tokenizer.json); `origin` names it in errors.
  SplitPretokenizer(std::string_view pattern, const std::string& origin);
  ~SplitPretokenizer();
  SplitPretokenizer(SplitPretokenizer&&) noexcept;
  SplitPretokenizer& operator=(SplitPretokenizer&&) noexcept;
  SplitPretokenizer(const SplitPretokenizer&) = delete;
  SplitPretokenizer& operator=(const SplitPretokenizer&) = delete;

  // [begin, end) byte ranges covering `text` in order, none empty. Throws kInvalidArgument if
  // `text` is not valid UTF-8.
  std::vector<std::pair<size_t, size_t>> split_pieces(std::string_view text) const;
  // Same, appending to `out`, for text already known to be valid UTF-8 (the tokenizer checks once).
  void split_valid(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
};

// The rewrite applied before compiling (exposed for tests): `\s`/`\S` become explicit classes of
// the Unicode White_Space characters, which is what Oniguruma matches (PCRE2's UCP `\s` misses
// U+0085), and `\p{N}` gains the code points PCRE2's tables lack. Throws kUnsupported for `\S`
// inside a character class.
std::string onig_to_pcre2(std::string_view pattern, const std::string& origin);

}  // namespace nnpipe
