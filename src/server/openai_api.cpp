#include "server/openai_api.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "engine/sampler.h"

namespace nnpipe::server {

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message,
                      std::string code = "invalid_value") {
  throw ApiError(400, std::move(code), message, param);
}

[[noreturn]] void wrong_type(const std::string& param, const json& v, const char* want) {
  bad(param, fmt::format("'{}' must be {}, not {}", param, want, json_type_name(v)),
      "invalid_type");
}

json parse_body(std::string_view body) {
  json j;
  try {
    j = parse_json(body, "request body");
  } catch (const Error& e) {
    bad("", e.what(), "invalid_json");
  }
  if (!j.is_object())
    bad("", fmt::format("the request body must be a JSON object, not {}", json_type_name(j)),
        "invalid_json");
  return j;
}

bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) wrong_type(name, v, "a boolean");
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& name) {
  if (!v.is_string()) wrong_type(name, v, "a string");
  return v.get<std::string>();
}

double get_number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) wrong_type(name, v, "a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(name, fmt::format("'{}' is {} but must be in [{}, {}]", name, d, lo, hi));
  return d;
}

int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  // 2.0 is an integer to JavaScript clients: accept an integral float, refuse 2.5.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && d >= static_cast<double>(lo) &&
        d <= static_cast<double>(hi))
      return static_cast<int64_t>(d);
    if (std::isfinite(d) && d == std::floor(d))
      bad(name, fmt::format("'{}' is {} but must be in [{}, {}]", name, d, lo, hi));
    wrong_type(name, v, "an integer");
  }
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo)))
      bad(name, fmt::format("'{}' is {} but must be in [{}, {}]", name, u, lo, hi));
    return static_cast<int64_t>(u);
  }
  if (!v.is_number_integer()) wrong_type(name, v, "an integer");
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi)
    bad(name, fmt::format("'{}' is {} but must be in [{}, {}]", name, i, lo, hi));
  return i;
}

// A message's content: a string, null (an empty turn), or OpenAI's array of parts of which only
// {"type": "text", "text": ...} is understood.
std::string message_content(const json& c, const std::string& name) {
  if (c.is_null()) return {};
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) wrong_type(name, c, "a string or an array of text parts");
  std::string text;
  for (size_t i = 0; i < c.size(); ++i) {
    const std::string pn = fmt::format("{}[{}]", name, i);
    const json& part = c[i];
    if (!part.is_object()) wrong_type(pn, part, "an object");
    auto t = part.find("type");
    if (t == part.end() || !t->is_string() || *t != "text")
      bad(pn, fmt::format("'{}': only parts of type \"text\" are supported", pn),
          "unsupported_value");
    auto tx = part.find("text");
    if (tx == part.end()) bad(pn + ".text", fmt::format("'{}.text' is missing", pn), "missing");
    text += get_string(*tx, pn + ".text");
  }
  return text;
}

ordered_json parse_messages(const json& v) {
  if (!v.is_array()) wrong_type("messages", v, "an array");
  if (v.empty()) bad("messages", "'messages' is empty: give at least one message");
  ordered_json out = ordered_json::array();
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string name = fmt::format("messages[{}]", i);
    const json& m = v[i];
    if (!m.is_object()) wrong_type(name, m, "an object");
    auto role = m.find("role");
    if (role == m.end()) bad(name + ".role", fmt::format("'{}.role' is missing", name), "missing");
    const std::string r = get_string(*role, name + ".role");
    auto content = m.find("content");
    std::string text;
    if (content != m.end()) text = message_content(*content, name + ".content");
    out.push_back({{"role", r}, {"content", text}});
  }
  return out;
}

std::vector<std::string> parse_stop(const json& v) {
  std::vector<std::string> stops;
  if (v.is_null()) return stops;
  if (v.is_string()) {
    stops.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > RequestDefaults::kMaxStops)
      bad("stop",
          fmt::format("'stop' has {} strings; at most {}", v.size(), RequestDefaults::kMaxStops));
    for (size_t i = 0; i < v.size(); ++i)
      stops.push_back(get_string(v[i], fmt::format("stop[{}]", i)));
  } else {
    wrong_type("stop", v, "a string or an array of strings");
  }
  for (const std::string& s : stops) {
    if (s.empty()) bad("stop", "'stop' strings must not be empty");
    if (s.size() > RequestDefaults::kMaxStopBytes)
      bad("stop", fmt::format("a 'stop' string is {} bytes; at most {}", s.size(),
                              RequestDefaults::kMaxStopBytes));
  }
  return stops;
}

std::vector<LoraSelection> parse_lora(const json& v) {
  if (!v.is_array()) wrong_type("lora", v, "an array of {\"id\" or \"name\", \"scale\"} objects");
  if (v.size() > RequestDefaults::kMaxLoraEntries)
    bad("lora", fmt::format("'lora' has {} entries; at most {}", v.size(),
                            RequestDefaults::kMaxLoraEntries));
  std::vector<LoraSelection> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string name = fmt::format("lora[{}]", i);
    const json& e = v[i];
    if (!e.is_object()) wrong_type(name, e, "an object");
    LoraSelection s;
    if (auto it = e.find("id"); it != e.end())
      s.id = get_int(*it, name + ".id", 0, std::numeric_limits<int64_t>::max());
    if (auto it = e.find("name"); it != e.end()) s.name = get_string(*it, name + ".name");
    if (s.id.has_value() == s.name.has_value())
      bad(name, fmt::format("'{}' needs exactly one of \"id\" and \"name\"", name));
    if (auto it = e.find("scale"); it != e.end())
      s.scale = static_cast<float>(get_number(*it, name + ".scale", -1e4, 1e4));
    out.push_back(std::move(s));
  }
  return out;
}

std::string hex_id() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}() * 0x9E3779B97F4A7C15ull;
  uint64_t x = salt ^ (counter.fetch_add(1) * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return fmt::format("{:016x}", x);
}

}  // namespace

const char* error_type(int status) {
  switch (status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "invalid_request_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "service_unavailable_error";
    default:
      return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

std::string error_body(int status, std::string_view code, std::string_view message,
                       std::string_view param) {
  ordered_json e = {{"message", std::string(message)},
                    {"type", error_type(status)},
                    {"code", std::string(code)},
                    {"param", nullptr}};
  if (!param.empty()) e["param"] = std::string(param);
  return dump_json(ordered_json{{"error", e}});
}

CompletionRequest parse_completion_request(std::string_view body, Endpoint endpoint) {
  const json j = parse_body(body);
  CompletionRequest r;
  r.endpoint = endpoint;
  engine::SamplingParams& s = r.gen.sampling;
  s.temperature = RequestDefaults::kTemperature;
  s.top_k = RequestDefaults::kTopK;
  s.top_p = RequestDefaults::kTopP;
  s.min_p = RequestDefaults::kMinP;
  s.penalty_last_n = RequestDefaults::kPenaltyLastN;
  const bool chat = endpoint == Endpoint::kChat;
  const float kPen = engine::SamplingLimits::kMaxPenalty;
  const int64_t kIntMax = std::numeric_limits<int>::max();
  bool have_input = false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "model") {
      if (!v.is_null()) r.model = get_string(v, k);
    } else if (k == "messages" && chat) {
      r.messages = parse_messages(v);
      have_input = true;
    } else if (k == "prompt" && !chat) {
      // A string, one-string array, or token ids (OpenAI's forms, less batches of prompts).
      if (v.is_string()) {
        r.prompt = engine::sanitize_utf8(v.get<std::string>());
      } else if (v.is_array() && v.size() == 1 && v[0].is_string()) {
        r.prompt = engine::sanitize_utf8(v[0].get<std::string>());
      } else if (v.is_array() && !v.empty() && v[0].is_number()) {
        std::vector<int32_t> ids;
        for (size_t i = 0; i < v.size(); ++i)
          ids.push_back(static_cast<int32_t>(
              get_int(v[i], fmt::format("prompt[{}]", i), 0, std::numeric_limits<int32_t>::max())));
        r.prompt_ids = std::move(ids);
      } else if (v.is_array() && v.size() > 1) {
        bad(k, "'prompt' with several prompts is not supported: send one request per prompt",
            "unsupported_value");
      } else {
        wrong_type(k, v, "a string or an array of token ids");
      }
      have_input = true;
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      if (!v.is_null()) {
        r.gen.max_tokens = get_int(v, k, 0, std::numeric_limits<int64_t>::max());
        r.max_tokens_given = true;
      }
    } else if (k == "temperature") {
      if (!v.is_null())
        s.temperature =
            static_cast<float>(get_number(v, k, 0, engine::SamplingLimits::kMaxTemperature));
    } else if (k == "top_p") {
      if (!v.is_null()) s.top_p = static_cast<float>(get_number(v, k, 0, 1));
    } else if (k == "top_k") {
      if (!v.is_null()) s.top_k = static_cast<int>(get_int(v, k, 0, kIntMax));
    } else if (k == "min_p") {
      if (!v.is_null()) s.min_p = static_cast<float>(get_number(v, k, 0, 1));
    } else if (k == "presence_penalty") {
      if (!v.is_null()) s.presence_penalty = static_cast<float>(get_number(v, k, -kPen, kPen));
    } else if (k == "frequency_penalty") {
      if (!v.is_null()) s.frequency_penalty = static_cast<float>(get_number(v, k, -kPen, kPen));
    } else if (k == "repeat_penalty") {
      if (!v.is_null()) {
        s.repeat_penalty = static_cast<float>(get_number(v, k, 0, kPen));
        if (s.repeat_penalty <= 0) bad(k, "'repeat_penalty' must be > 0 (1 = off)");
      }
    } else if (k == "repeat_last_n") {
      if (!v.is_null()) s.penalty_last_n = static_cast<int>(get_int(v, k, -1, kIntMax));
    } else if (k == "seed") {
      // -1 is llama-server's "random"; any other integer seeds the draw.
      if (!v.is_null()) {
        if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() == -1) {
          r.seed_given = false;
        } else {
          if (v.is_number_unsigned())
            s.seed = v.get<uint64_t>();
          else
            s.seed = static_cast<uint64_t>(get_int(v, k, 0, std::numeric_limits<int64_t>::max()));
          r.seed_given = true;
        }
      }
    } else if (k == "stop") {
      r.gen.stop = parse_stop(v);
    } else if (k == "n") {
      if (!v.is_null() && get_int(v, k, 1, kIntMax) != 1)
        bad(k, "'n' must be 1: one choice per request (send n requests for n choices)",
            "unsupported_value");
    } else if (k == "stream") {
      if (!v.is_null()) r.stream = get_bool(v, k);
    } else if (k == "stream_options") {
      if (v.is_null()) continue;
      if (!v.is_object()) wrong_type(k, v, "an object");
      if (auto u = v.find("include_usage"); u != v.end() && !u->is_null())
        r.include_usage = get_bool(*u, "stream_options.include_usage");
    } else if (k == "ignore_eos") {
      if (!v.is_null()) r.gen.ignore_eos = get_bool(v, k);
    } else if (k == "lora") {
      if (!v.is_null()) r.lora = parse_lora(v);
    } else if (k == "user" || k == "logprobs" || k == "echo") {
      // Accepted and without effect: user is a tag; logprobs/echo false is the only behaviour.
      if ((k == "logprobs" || k == "echo") && v.is_boolean() && v.get<bool>())
        bad(k, fmt::format("'{}' is not supported", k), "unsupported_value");
    } else {
      r.ignored_fields.push_back(k);
    }
  }
  if (!have_input)
    bad(chat ? "messages" : "prompt", fmt::format("'{}' is missing", chat ? "messages" : "prompt"),
        "missing");
  if (!chat && !r.prompt_ids && r.prompt.empty())
    bad("prompt", "'prompt' is empty: there is nothing to continue");
  if (!r.stream) r.include_usage = false;
  try {
    engine::validate(s);
  } catch (const Error& e) {
    bad("", e.what());
  }
  return r;
}

LoraAdapterRequest parse_lora_adapter_request(std::string_view body, bool need_path) {
  const json j = parse_body(body);
  LoraAdapterRequest r;
  auto n = j.find("lora_name");
  if (n == j.end()) bad("lora_name", "'lora_name' is missing", "missing");
  r.name = get_string(*n, "lora_name");
  if (r.name.empty()) bad("lora_name", "'lora_name' is empty");
  auto p = j.find("lora_path");
  if (p != j.end()) r.path = get_string(*p, "lora_path");
  if (need_path && r.path.empty()) bad("lora_path", "'lora_path' is missing", "missing");
  return r;
}

std::vector<std::pair<int64_t, float>> parse_lora_scales(std::string_view body) {
  json j;
  try {
    j = parse_json(body, "request body");
  } catch (const Error& e) {
    bad("", e.what(), "invalid_json");
  }
  if (!j.is_array()) wrong_type("body", j, "an array of {\"id\", \"scale\"} objects");
  std::vector<std::pair<int64_t, float>> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string name = fmt::format("[{}]", i);
    const json& e = j[i];
    if (!e.is_object()) wrong_type(name, e, "an object");
    auto id = e.find("id");
    if (id == e.end()) bad(name + ".id", fmt::format("'{}.id' is missing", name), "missing");
    auto sc = e.find("scale");
    if (sc == e.end()) bad(name + ".scale", fmt::format("'{}.scale' is missing", name), "missing");
    out.emplace_back(get_int(*id, name + ".id", 0, std::numeric_limits<int64_t>::max()),
                     static_cast<float>(get_number(*sc, name + ".scale", -1e4, 1e4)));
  }
  return out;
}

ordered_json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

ResponseMeta new_response_meta(Endpoint endpoint, std::string model) {
  ResponseMeta m;
  m.id = (endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-") + hex_id();
  m.created = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  m.model = std::move(model);
  return m;
}

namespace {

ordered_json head(Endpoint endpoint, const ResponseMeta& m, bool chunk) {
  const char* object = endpoint == Endpoint::kChat
                           ? (chunk ? "chat.completion.chunk" : "chat.completion")
                           : "text_completion";
  return {{"id", m.id},
          {"object", object},
          {"created", m.created},
          {"model", m.model},
          {"system_fingerprint", "nnpipe"}};
}

ordered_json finish(std::string_view finish_reason) {
  return finish_reason.empty() ? ordered_json(nullptr) : ordered_json(std::string(finish_reason));
}

}  // namespace

std::string completion_body(Endpoint endpoint, const ResponseMeta& m, std::string_view text,
                            std::string_view finish_reason, const Usage& u) {
  ordered_json r = head(endpoint, m, false);
  ordered_json choice = {{"index", 0}};
  if (endpoint == Endpoint::kChat)
    choice["message"] = {{"role", "assistant"}, {"content", std::string(text)}};
  else
    choice["text"] = std::string(text);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish(finish_reason);
  r["choices"] = ordered_json::array({choice});
  r["usage"] = usage_json(u);
  return dump_json(r);
}

std::string chunk_body(Endpoint endpoint, const ResponseMeta& m, std::string_view text, bool first,
                       std::string_view finish_reason, bool with_usage_null) {
  ordered_json r = head(endpoint, m, true);
  ordered_json choice = {{"index", 0}};
  if (endpoint == Endpoint::kChat) {
    ordered_json delta = ordered_json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish_reason.empty())) delta["content"] = std::string(text);
    choice["delta"] = delta;
  } else {
    choice["text"] = std::string(text);
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish(finish_reason);
  r["choices"] = ordered_json::array({choice});
  if (with_usage_null) r["usage"] = nullptr;
  return dump_json(r);
}

std::string usage_chunk_body(Endpoint endpoint, const ResponseMeta& m, const Usage& u) {
  ordered_json r = head(endpoint, m, true);
  r["choices"] = ordered_json::array();
  r["usage"] = usage_json(u);
  return dump_json(r);
}

bool keys_equal(std::string_view given, std::string_view expected) {
  // Every byte of the expected key is looked at whatever the presented one is: no early exit, and
  // the length difference is folded into the same accumulator.
  volatile unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

}  // namespace nnpipe::server
