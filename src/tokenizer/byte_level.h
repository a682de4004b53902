// GPT-2's bytes_to_unicode: every byte gets a printable code point so that byte-level BPE tokens
// are valid strings in tokenizer.json ("Ġ" is the space byte, "Ċ" the newline...).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace nnpipe::byte_level {

// UTF-8 of the code point byte `b` maps to.
const std::string& byte_to_str(uint8_t b);
// The byte a code point stands for, or -1 if it is not one of the 256 mapped code points.
int char_to_byte(char32_t cp);
// Bytes -> mapped string ("a b" -> "aĠb").
std::string encode(std::string_view bytes);
// Mapped string -> bytes; false if some character is not a mapped one (out is then unspecified).
bool decode(std::string_view token, std::string* out);

}  // namespace nnpipe::byte_level
