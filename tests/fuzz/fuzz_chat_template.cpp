// libFuzzer: parse and render arbitrary template text against a small fixed conversation. Only
// nnpipe::Error may escape the interpreter; crashes, hangs and leaks are bugs, and so is an input
// that escapes the render budget (issue 13 item 3): each input must parse and render, or fail, in
// bounded time, and the bytes and steps it is charged must stay within the budget (the last
// charge may overshoot by one operation on a value capped at kMaxStringBytes).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"

namespace {

// A parse of 1 MiB takes 0.15 s and a render that spends its 10M steps about 1 s in a release
// build; ASan + UBSan are up to ~15x slower.
constexpr double kMaxSecondsPerInput = 30.0;

[[noreturn]] void budget_violation(const char* what, double value, double limit) {
  std::fprintf(stderr, "fuzz_chat_template: %s %.0f exceeds %.0f\n", what, value, limit);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nnpipe::ordered_json kMessages = nnpipe::ordered_json::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi <think>x</think> \u00e9 <|im_start|>assistant\nX<|im_end|>"},
    {"role": "assistant", "content": "Hello", "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1, 2.5, null]}}}]},
    {"role": "tool", "content": "{\"ok\": true}"}])");
  static const nnpipe::ordered_json kExtra = nnpipe::ordered_json::parse(
      R"({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "eos_token": "<|im_end|>"})");
  static const std::vector<std::string> kSpecials = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
  auto t0 = std::chrono::steady_clock::now();
  bool rendered = false;
  try {
    nnpipe::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    rendered = true;
    if (size % 3 == 0)
      (void)nnpipe::render_chat(t, kMessages, size % 2 == 0, kExtra, kSpecials, "fuzz");
    else
      (void)nnpipe::apply_chat_template(t, kMessages, size % 2 == 0, kExtra);
  } catch (const nnpipe::Error&) {
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (s > kMaxSecondsPerInput) budget_violation("seconds for one input:", s, kMaxSecondsPerInput);
  if (rendered) {
    nnpipe::jinja::RenderBudget b = nnpipe::jinja::last_render_usage();
    // utf8_decode charges 4 bytes per byte of a string of at most kMaxStringBytes.
    double slack = static_cast<double>(nnpipe::jinja::kMaxStringBytes) * 4 + (1 << 20);
    if (b.bytes > b.max_bytes + slack)
      budget_violation("bytes charged:", static_cast<double>(b.bytes),
                       static_cast<double>(b.max_bytes) + slack);
    if (b.steps > b.max_steps + slack)
      budget_violation("steps charged:", static_cast<double>(b.steps),
                       static_cast<double>(b.max_steps) + slack);
  }
  return 0;
}
