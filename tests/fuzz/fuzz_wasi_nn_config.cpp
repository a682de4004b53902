// libFuzzer: arbitrary bytes as the WASI-NN backend's config JSON (init, load and runtime
// parameters all go through parse_config). Only nnpipe::Error may escape; whatever is accepted
// must be within the documented ranges (tests/wasi_nn/README.md), also when parsed on top of
// itself (a load config over the init one).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "capi/wasi_nn_config.h"
#include "core/error.h"

using namespace nnpipe;

namespace {

void check(bool ok) {
  if (!ok) std::abort();  // an accepted config out of range
}

void check_ranges(const wasi_nn::Config& c) {
  const engine::SamplingParams& s = c.gen.sampling;
  check(c.ctx_size >= 0 && c.batch_size >= 1 && c.batch_size <= 65536);
  check(c.threads >= 0 && c.threads <= 1024);
  check(c.gen.max_tokens >= 0);
  check(std::isfinite(s.temperature) && s.temperature >= 0 && s.temperature <= 100);
  check(s.top_p >= 0 && s.top_p <= 1 && s.min_p >= 0 && s.min_p <= 1 && s.top_k >= 0);
  check(std::isfinite(s.repeat_penalty) && s.repeat_penalty > 0);
  check(std::isfinite(s.presence_penalty) && std::isfinite(s.frequency_penalty));
  check(s.penalty_last_n >= -1);
  check(c.max_sessions >= 1 && c.max_sessions <= 100000);
  check(c.max_sessions_memory_mb > 0 && c.max_sessions_memory_mb <= 1e7);
  check(c.idle_timeout_ms >= 0 && c.idle_timeout_ms <= 315360000000);
  if (c.lora_adapters)
    for (const engine::AdapterSpec& a : *c.lora_adapters)
      check(std::isfinite(a.scale) && std::fabs(a.scale) <= wasi_nn::kMaxLoraScale);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> warnings;
  try {
    wasi_nn::Config c = wasi_nn::parse_config(text, {}, &warnings);
    check_ranges(c);
    check_ranges(wasi_nn::parse_config(text, c, nullptr));
  } catch (const Error&) {
  }
  return 0;
}
