// libFuzzer: parse and render arbitrary template text against a small fixed conversation. Only
// nnpipe::Error may escape the interpreter; crashes, hangs and leaks are bugs.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nnpipe::ordered_json kMessages = nnpipe::ordered_json::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi <think>x</think> \u00e9"},
    {"role": "assistant", "content": "Hello", "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1, 2.5, null]}}}]},
    {"role": "tool", "content": "{\"ok\": true}"}])");
  static const nnpipe::ordered_json kExtra = nnpipe::ordered_json::parse(
      R"({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "eos_token": "<|im_end|>"})");
  try {
    nnpipe::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)nnpipe::apply_chat_template(t, kMessages, size % 2 == 0, kExtra);
  } catch (const nnpipe::Error&) {
  }
  return 0;
}
