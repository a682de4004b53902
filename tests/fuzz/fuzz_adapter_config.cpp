// libFuzzer: arbitrary bytes as a PEFT adapter_config.json (LoraConfig::from_json, as
// PeftAdapter::load reads it). It must validate (then rank, alpha and targets are usable and the
// config written back reads back the same) or throw nnpipe::Error; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "core/json.h"
#include "io/peft_adapter.h"

using namespace nnpipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const LoraConfig c =
        LoraConfig::from_json(parse_json(text, "adapter_config.json"), "adapter_config.json");
    if (c.r <= 0 || c.target_modules.empty()) __builtin_trap();
    for (const std::string& m : c.target_modules)
      if (!lora_module_parent(m)) __builtin_trap();
    (void)c.scaling();
    const std::string again = dump_json(c.to_json());
    const LoraConfig d = LoraConfig::from_json(parse_json(again, "rewritten"), "rewritten");
    if (dump_json(d.to_json()) != again) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
