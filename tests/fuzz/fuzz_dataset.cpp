// libFuzzer target: chat dataset parsing (JSON list and JSONL) on arbitrary bytes must either
// return validated conversations or throw nnpipe::Error; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "train/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool jsonl : {false, true}) {
    try {
      auto convs = nnpipe::parse_conversations(text, "fuzz", jsonl);
      for (const auto& c : convs) {
        bool assistant = false;
        for (const auto& m : c.messages) assistant |= m.role == "assistant";
        if (c.messages.empty() || !assistant) __builtin_trap();  // validation let it through
      }
    } catch (const nnpipe::Error&) {
    }
  }
  return 0;
}
