// libFuzzer: arbitrary bytes as a model's config.json. ModelConfig::from_json must validate (then
// every size is within ModelLimits, consistent, and to_json() reads back to the same config) or
// throw nnpipe::Error; anything else (another exception, a crash, a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "arch/config.h"
#include "core/error.h"
#include "core/json.h"

using namespace nnpipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const ModelConfig c = ModelConfig::from_json(parse_json(text, "config.json"), "config.json");
    if (c.num_hidden_layers < 1 || c.num_hidden_layers > ModelLimits::kMaxLayers ||
        c.hidden_size > ModelLimits::kMaxHidden || c.vocab_size > ModelLimits::kMaxVocab ||
        c.intermediate_size > ModelLimits::kMaxIntermediate ||
        c.head_dim > ModelLimits::kMaxHeadDim || c.num_attention_heads % c.num_key_value_heads != 0)
      __builtin_trap();
    // What we write must read back to the same config (config.json is rewritten by every
    // training and quantization step).
    const json out = c.to_json();
    const std::string again = dump_json(out);
    const ModelConfig d = ModelConfig::from_json(parse_json(again, "rewritten"), "rewritten");
    if (dump_json(d.to_json()) != again) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
