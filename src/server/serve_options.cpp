#include "server/serve_options.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/file.h"

namespace nnpipe::server {

int ServeOptions::http_thread_count() const {
  if (http_threads > 0) return http_threads;
  // One thread per open connection: enough for every slot and every queued request, plus a few
  // for /health, /metrics and the 429s of the ones beyond.
  return std::max(8, parallel + max_queue + 4);
}

const std::vector<std::string>& serve_option_keys() {
  static const std::vector<std::string> k = {
      "model",        "lora",     "alias",        "host",    "port",        "api-key",
      "api-key-file", "parallel", "ctx-size",     "chunk",   "max-queue",   "max-loras",
      "max-body",     "threads",  "http-threads", "timeout", "runtime-lora"};
  return k;
}

namespace {

std::string norm_key(std::string k) {
  std::replace(k.begin(), k.end(), '_', '-');
  return k;
}

template <typename T>
T get_int(const json& v, const std::string& origin, const std::string& key, int64_t lo,
          int64_t hi) {
  if (!v.is_number_integer())
    fail(ErrorCode::kInvalidArgument, "{}: '{}' must be an integer, not {}", origin, key,
         json_type_name(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    fail(ErrorCode::kInvalidArgument, "{}: '{}' must be in [{}, {}]", origin, key, lo, hi);
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi)
    fail(ErrorCode::kInvalidArgument, "{}: '{}' is {} but must be in [{}, {}]", origin, key, i, lo,
         hi);
  return static_cast<T>(i);
}

std::string get_str(const json& v, const std::string& origin, const std::string& key) {
  if (!v.is_string())
    fail(ErrorCode::kInvalidArgument, "{}: '{}' must be a string, not {}", origin, key,
         json_type_name(v));
  return v.get<std::string>();
}

}  // namespace

void apply_serve_config(ServeOptions& o, const json& cfg, const std::set<std::string>& from_cli,
                        const std::string& origin) {
  if (!cfg.is_object())
    fail(ErrorCode::kInvalidArgument, "{}: a config file is a JSON object, not {}", origin,
         json_type_name(cfg));
  const int kIntMax = std::numeric_limits<int>::max();
  const int64_t kI64Max = std::numeric_limits<int64_t>::max();
  for (auto it = cfg.begin(); it != cfg.end(); ++it) {
    const std::string k = norm_key(it.key());
    const json& v = it.value();
    const auto& keys = serve_option_keys();
    if (std::find(keys.begin(), keys.end(), k) == keys.end())
      fail(ErrorCode::kInvalidArgument, "{}: unknown key '{}' (known: {})", origin, it.key(),
           fmt::join(keys, ", "));
    if (from_cli.count(k)) continue;
    if (k == "model")
      o.model = get_str(v, origin, k);
    else if (k == "alias")
      o.alias = get_str(v, origin, k);
    else if (k == "host")
      o.host = get_str(v, origin, k);
    else if (k == "api-key")
      o.api_key = get_str(v, origin, k);
    else if (k == "api-key-file")
      o.api_key_file = get_str(v, origin, k);
    else if (k == "port")
      o.port = get_int<int>(v, origin, k, 0, 65535);
    else if (k == "parallel")
      o.parallel = get_int<int>(v, origin, k, 1, 1024);
    else if (k == "ctx-size")
      o.ctx_size = get_int<int64_t>(v, origin, k, 0, kI64Max);
    else if (k == "chunk")
      o.chunk = get_int<int64_t>(v, origin, k, 1, kI64Max);
    else if (k == "max-queue")
      o.max_queue = get_int<int>(v, origin, k, 0, 1 << 20);
    else if (k == "max-loras")
      o.max_loras = get_int<int64_t>(v, origin, k, 0, kI64Max);
    else if (k == "max-body")
      o.max_body = get_int<size_t>(v, origin, k, 1, kI64Max);
    else if (k == "threads")
      o.threads = get_int<int>(v, origin, k, 0, kIntMax);
    else if (k == "http-threads")
      o.http_threads = get_int<int>(v, origin, k, 0, 4096);
    else if (k == "timeout")
      o.timeout = get_int<int>(v, origin, k, 1, 86400);
    else if (k == "runtime-lora") {
      if (!v.is_boolean())
        fail(ErrorCode::kInvalidArgument, "{}: 'runtime-lora' must be a boolean, not {}", origin,
             json_type_name(v));
      o.runtime_lora = v.get<bool>();
    } else if (k == "lora") {
      o.loras.clear();
      if (v.is_string()) {
        o.loras.push_back(v.get<std::string>());
      } else if (v.is_array()) {
        for (const json& e : v) o.loras.push_back(get_str(e, origin, "lora[]"));
      } else {
        fail(ErrorCode::kInvalidArgument,
             "{}: 'lora' must be a string or an array of strings (NAME=FILE[:SCALE]...), not {}",
             origin, json_type_name(v));
      }
    }
  }
}

void load_serve_config(ServeOptions& o, const std::string& path,
                       const std::set<std::string>& from_cli) {
  apply_serve_config(o, parse_json(read_file(path), path), from_cli, path);
}

void finish_serve_options(ServeOptions& o) {
  if (o.model.empty())
    fail(ErrorCode::kInvalidArgument, "serve: no model: give --model (or \"model\" in --config)");
  if (!o.api_key.empty() && !o.api_key_file.empty())
    fail(ErrorCode::kInvalidArgument, "serve: give --api-key or --api-key-file, not both");
  if (!o.api_key_file.empty()) {
    std::string k = read_file(o.api_key_file);
    while (!k.empty() &&
           (k.back() == '\n' || k.back() == '\r' || k.back() == ' ' || k.back() == '\t'))
      k.pop_back();
    if (k.empty())
      fail(ErrorCode::kInvalidArgument, "{}: the API key file is empty", o.api_key_file);
    o.api_key = std::move(k);
  }
  if (o.port < 0 || o.port > 65535)
    fail(ErrorCode::kInvalidArgument, "serve: --port {} is not in [0, 65535]", o.port);
  if (o.parallel < 1) fail(ErrorCode::kInvalidArgument, "serve: --parallel must be >= 1");
}

}  // namespace nnpipe::server
