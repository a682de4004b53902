#include "tokenizer/byte_level.h"

#include <array>

#include "core/utf8.h"

namespace nnpipe::byte_level {
namespace {

struct Tables {
  std::array<std::string, 256> str;
  std::array<int16_t, 324> back;  // mapped code points are all < 0x144
  Tables() {
    back.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? char32_t(b) : char32_t(256 + n++);
      utf8::append(str[b], cp);
      back[cp] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

const std::string& byte_to_str(uint8_t b) {
  return tables().str[b];
}

int char_to_byte(char32_t cp) {
  return cp < tables().back.size() ? tables().back[cp] : -1;
}

std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += tables().str[b];
  return out;
}

bool decode(std::string_view token, std::string* out) {
  out->clear();
  size_t i = 0;
  while (i < token.size()) {
    bool complete;
    size_t n = utf8::valid_prefix(token, i, &complete);
    if (!complete) return false;
    char32_t cp;
    utf8::decode(token, i, &cp);
    int b = char_to_byte(cp);
    if (b < 0) return false;
    *out += static_cast<char>(b);
    i += n;
  }
  return true;
}

}  // namespace nnpipe::byte_level
