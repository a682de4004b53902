// libFuzzer: arbitrary bytes as a model's tokenizer_config.json, read as load_model_chat_template
// reads it (special tokens, "chat_template" as a string or a list of named templates), then the
// chosen template parsed (its rendering is fuzz_chat_template's). Only nnpipe::Error may escape.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/chat_assets.h"
#include "tokenizer/chat_template.h"

using namespace nnpipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    ModelChatTemplate mt;
    auto source = parse_tokenizer_config(text, "tokenizer_config.json", size % 2 == 1, mt);
    for (const auto& [key, value] : mt.special_tokens.items())
      if (!value.is_string()) __builtin_trap();
    if (source) {
      const ChatTemplate t(*source, "tokenizer_config.json:chat_template");
      (void)t;
    }
  } catch (const Error&) {
  }
  return 0;
}
