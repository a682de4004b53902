// libFuzzer: arbitrary bytes as the body of a `nnpipe serve` request. The first byte picks the
// parser (chat, completions, load/unload adapter, /lora-adapters scales); every parser must
// return a request within the documented limits or throw ApiError with a 4xx status, and the
// response builders must turn what it returned into valid JSON. Anything else (another exception,
// a crash, a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "core/json.h"
#include "server/openai_api.h"

using namespace nnpipe;
using namespace nnpipe::server;

namespace {

void check_completion(std::string_view body, Endpoint ep) {
  const CompletionRequest r = parse_completion_request(body, ep);
  const auto& s = r.gen.sampling;
  if (!(s.temperature >= 0) || !(s.top_p >= 0 && s.top_p <= 1) || !(s.min_p >= 0 && s.min_p <= 1) ||
      s.top_k < 0 || !(s.repeat_penalty > 0) || r.gen.max_tokens < 0 ||
      r.gen.stop.size() > RequestDefaults::kMaxStops)
    __builtin_trap();
  for (const std::string& stop : r.gen.stop)
    if (stop.empty() || stop.size() > RequestDefaults::kMaxStopBytes) __builtin_trap();
  if (ep == Endpoint::kChat && r.messages.empty()) __builtin_trap();
  if (ep == Endpoint::kCompletion && !r.prompt_ids && r.prompt.empty()) __builtin_trap();
  if (r.lora)
    for (const LoraSelection& l : *r.lora)
      if (l.id.has_value() == l.name.has_value()) __builtin_trap();
  // What the server answers with must parse back.
  const ResponseMeta m = new_response_meta(ep, r.model);
  std::string text;
  for (const auto& msg : r.messages) text += msg["content"].get<std::string>();
  text += r.prompt;
  parse_json(completion_body(ep, m, text, "stop", {}), "body");
  parse_json(chunk_body(ep, m, text, true, "", r.include_usage), "chunk");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 5) {
      case 0:
        check_completion(body, Endpoint::kChat);
        break;
      case 1:
        check_completion(body, Endpoint::kCompletion);
        break;
      case 2:
        parse_lora_adapter_request(body, true);
        break;
      case 3:
        parse_lora_adapter_request(body, false);
        break;
      default:
        parse_lora_scales(body);
        break;
    }
  } catch (const ApiError& e) {
    if (e.status() < 400 || e.status() >= 500) __builtin_trap();
    parse_json(error_body(e.status(), e.code(), e.what(), e.param()), "error");
  }
  return 0;
}
