// libFuzzer: arbitrary bytes as tokenizer.json. Only nnpipe::Error may escape from_json (any
// other exception, crash or sanitizer report is a bug); whatever loads must encode and decode.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/json.h"
#include "tokenizer/tokenizer.h"

using namespace nnpipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    Tokenizer t = Tokenizer::from_json(parse_json(text, "fuzz.json"), "fuzz.json");
    auto ids = t.encode("Hello, world! <|im_start|>caf\xC3\xA9 123  \n");
    (void)t.decode(ids);
    for (int32_t id = 0; id < static_cast<int32_t>(t.size()) && id < 512; ++id)
      (void)t.token_bytes(id);
  } catch (const Error&) {
  }
  return 0;
}
