// The OpenAI-compatible request and response JSON of `nnpipe serve`: request bodies parsed and
// validated into a CompletionRequest (every wrong type or value is an ApiError with the HTTP
// status and OpenAI's error fields), and the response, stream-chunk and error bodies. No I/O and
// no model here: the HTTP layer (http_server.cpp) turns a request into a scheduler Job.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "engine/session.h"
#include "server/adapter_registry.h"

namespace nnpipe::server {

// An error answered as {"error": {"message", "type", "code", "param"}} with `status`.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string code, const std::string& message, std::string param = {})
      : std::runtime_error(message),
        status_(status),
        code_(std::move(code)),
        param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& code() const { return code_; }
  const std::string& param() const { return param_; }

 private:
  int status_;
  std::string code_, param_;
};

// OpenAI's error "type" for an HTTP status ("invalid_request_error", "authentication_error", ...).
const char* error_type(int status);
// {"error": {"message", "type", "code", "param"}}.
std::string error_body(int status, std::string_view code, std::string_view message,
                       std::string_view param = {});

enum class Endpoint { kChat, kCompletion };

// What nnpipe uses when a request leaves a sampling field out: llama-server's defaults (OpenAI's
// own, temperature 1 and top_p 1, sample from the raw distribution, which random and small models
// turn into noise). A request that sets a field gets exactly that value.
struct RequestDefaults {
  static constexpr float kTemperature = 0.8f;
  static constexpr int kTopK = 40;
  static constexpr float kTopP = 0.95f;
  static constexpr float kMinP = 0.05f;
  static constexpr int kPenaltyLastN = 64;
  static constexpr size_t kMaxStops = 16;        // OpenAI allows 4
  static constexpr size_t kMaxStopBytes = 1024;  // per stop string
  static constexpr size_t kMaxLoraEntries = 64;  // entries of the `lora` field
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletion;
  std::string model;  // "" when absent: the base model
  // Chat: [{role, content}] with the contents as valid UTF-8 strings (text parts joined).
  ordered_json messages = ordered_json::array();
  // Completions: the prompt text (invalid UTF-8 replaced), or token ids when prompt_ids is set.
  std::string prompt;
  std::optional<std::vector<int32_t>> prompt_ids;
  engine::GenerateParams gen;     // max_tokens is the request's or, when absent, unset (see below)
  bool max_tokens_given = false;  // absent: until the context fills or an end-of-generation token
  bool seed_given = false;        // absent: a random seed per request
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::optional<std::vector<LoraSelection>> lora;
  std::vector<std::string> ignored_fields;  // unknown top-level fields (logged as a warning)
};

// Parses a /v1/chat/completions or /v1/completions body. Throws ApiError (400) naming the field:
// malformed JSON, a non-object body, a wrong type, a value out of range, n != 1, a missing
// messages/prompt. Unknown fields are listed in ignored_fields, not refused.
CompletionRequest parse_completion_request(std::string_view body, Endpoint endpoint);

// {"lora_name", "lora_path"} of /v1/load_lora_adapter; {"lora_name"} of unload (path optional).
struct LoraAdapterRequest {
  std::string name, path;
};
LoraAdapterRequest parse_lora_adapter_request(std::string_view body, bool need_path);
// POST /lora-adapters: [{"id": N, "scale": S}, ...].
std::vector<std::pair<int64_t, float>> parse_lora_scales(std::string_view body);

// The usage object: prompt, completion and total tokens (and the cached prompt tokens).
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};
ordered_json usage_json(const Usage& u);

// Identity of one response: "chatcmpl-..." / "cmpl-...", the creation time and the model name.
struct ResponseMeta {
  std::string id;
  int64_t created = 0;
  std::string model;
};
ResponseMeta new_response_meta(Endpoint endpoint, std::string model);

// The whole (non-streaming) response.
std::string completion_body(Endpoint endpoint, const ResponseMeta& m, std::string_view text,
                            std::string_view finish_reason, const Usage& u);
// One stream chunk's JSON (without "data: "): a piece of text (the first chat chunk also carries
// the role), or, with a finish_reason, the last one. `with_usage_null`: include_usage asks for
// "usage": null in every chunk but the usage chunk.
std::string chunk_body(Endpoint endpoint, const ResponseMeta& m, std::string_view text, bool first,
                       std::string_view finish_reason, bool with_usage_null);
// The usage chunk of stream_options.include_usage: empty choices and the usage.
std::string usage_chunk_body(Endpoint endpoint, const ResponseMeta& m, const Usage& u);

// Constant-time comparison of a presented API key with the expected one (the time depends only
// on the expected key's length).
bool keys_equal(std::string_view given, std::string_view expected);

}  // namespace nnpipe::server
