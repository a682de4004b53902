// UTF-8 helpers (tokenizer, GGUF keys, datasets): validation, code point iteration, and the lossy
// conversion that matches Rust's String::from_utf8_lossy (what HF tokenizers' decode uses).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace nnpipe::utf8 {

// Decodes the code point at s[i] (s must be valid UTF-8 there); returns its byte length.
inline size_t decode(std::string_view s, size_t i, char32_t* cp) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  if (c < 0xE0) {
    *cp = (char32_t(c & 0x1F) << 6) | (b(1) & 0x3F);
    return 2;
  }
  if (c < 0xF0) {
    *cp = (char32_t(c & 0x0F) << 12) | (char32_t(b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    return 3;
  }
  *cp = (char32_t(c & 0x07) << 18) | (char32_t(b(1) & 0x3F) << 12) | (char32_t(b(2) & 0x3F) << 6) |
        (b(3) & 0x3F);
  return 4;
}

void append(std::string& out, char32_t cp);

// Length of the valid (possibly incomplete) sequence starting at s[i]: returns the number of bytes
// that form a valid prefix of some character (1..4); `complete` tells whether it is a whole one.
// Returns 0 if s[i] cannot start a character. Follows the Unicode "maximal subpart" rule.
size_t valid_prefix(std::string_view s, size_t i, bool* complete);

// Byte offset of the first invalid byte, or npos if `s` is valid UTF-8.
size_t find_invalid(std::string_view s);

// Invalid sequences (maximal subparts) become U+FFFD, exactly like from_utf8_lossy.
std::string lossy(std::string_view s);

}  // namespace nnpipe::utf8
