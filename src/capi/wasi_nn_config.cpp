#include "capi/wasi_nn_config.h"

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>

#include "core/error.h"
#include "core/json.h"

namespace nnpipe::wasi_nn {

namespace {

void need(bool ok, const std::string& key, const char* what) {
  if (!ok) fail(ErrorCode::kInvalidArgument, "config key '{}': expected {}", key, what);
}
int64_t as_int(const json& v, const std::string& key) {
  // Doubles are range-checked before the cast (out of int64's range it is undefined).
  need(v.is_number_integer() ||
           (v.is_number_float() && std::isfinite(v.get<double>()) &&
            std::fabs(v.get<double>()) < 9.2e18 && v.get<double>() == std::trunc(v.get<double>())),
       key, "an integer (within +-2^63)");
  if (v.is_number_unsigned())
    need(v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), key, "an integer below 2^63");
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
}
// An integer in [lo, hi]; `what` says the range and what its ends mean.
int64_t int_in(const json& v, const std::string& key, int64_t lo, int64_t hi, const char* what) {
  const int64_t x = as_int(v, key);
  if (x < lo || x > hi)
    fail(ErrorCode::kInvalidArgument, "config key '{}': {} is out of range: expected {}", key, x,
         what);
  return x;
}
double as_num(const json& v, const std::string& key) {
  need(v.is_number() && std::isfinite(v.get<double>()), key, "a finite number");
  return v.get<double>();
}
float num_in(const json& v, const std::string& key, double lo, double hi, const char* what) {
  const double x = as_num(v, key);
  if (x < lo || x > hi)
    fail(ErrorCode::kInvalidArgument, "config key '{}': {} is out of range: expected {}", key, x,
         what);
  return static_cast<float>(x);
}
bool as_bool(const json& v, const std::string& key) {
  need(v.is_boolean(), key, "true or false");
  return v.get<bool>();
}
std::string as_str(const json& v, const std::string& key) {
  need(v.is_string(), key, "a string");
  return v.get<std::string>();
}

using Setter = std::function<void(const json&, const std::string&, Config&)>;
using Table = std::map<std::string, Setter>;

void apply(const json& obj, const std::string& prefix, const Table& t, Config& c,
           std::vector<std::string>* warnings) {
  need(obj.is_object(), prefix.empty() ? std::string("(top level)") : prefix, "an object");
  for (const auto& [k, v] : obj.items()) {
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    auto it = t.find(k);
    if (it == t.end()) {
      if (warnings) warnings->push_back(fmt::format("unknown config key '{}' ignored", key));
      continue;
    }
    it->second(v, key, c);
  }
}

constexpr int64_t kMaxThreads = 1024;

void set_ctx(const json& v, const std::string& k, Config& c) {
  // Past the model's context length it is capped at load (the model is not known here).
  c.ctx_size = int_in(v, k, 0, INT64_MAX,
                      "an integer >= 0 (0: min(4096, the model's context); capped at the model's)");
}
void set_max_tokens(const json& v, const std::string& k, Config& c) {
  c.gen.max_tokens = int_in(v, k, 0, INT64_MAX, "an integer >= 0 (the context bounds the reply)");
}
void set_batch(const json& v, const std::string& k, Config& c) {
  c.batch_size = int_in(v, k, 1, 65536, "an integer in [1, 65536]");
}

const Table& model_table() {
  static const Table t = {
      {"n_gpu_layers",
       [](const json& v, const std::string& k, Config& c) {
         c.n_gpu_layers = as_int(v, k);
         c.n_gpu_layers_set = true;
       }},
      {"ctx_size", set_ctx},
      {"n_ctx", set_ctx},
      {"n_predict", set_max_tokens},
      {"max_tokens", set_max_tokens},
      {"batch_size", set_batch},
      {"n_batch", set_batch},
      {"threads",
       [](const json& v, const std::string& k, Config& c) {
         c.threads = static_cast<int>(
             int_in(v, k, 0, kMaxThreads, "an integer in [0, 1024] (0: all cores)"));
       }},
      {"system_prompt",
       [](const json& v, const std::string& k, Config& c) { c.system_prompt = as_str(v, k); }},
  };
  return t;
}

void set_temperature(const json& v, const std::string& k, Config& c) {
  c.gen.sampling.temperature = num_in(v, k, 0, 100, "a number in [0, 100] (0: greedy)");
}

const Table& sampling_table() {
  static const Table t = {
      {"temperature", set_temperature},
      {"temp", set_temperature},
      {"top_p",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.top_p = num_in(v, k, 0, 1, "a number in [0, 1] (1: off)");
       }},
      {"top_k",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.top_k =
             static_cast<int>(int_in(v, k, 0, INT32_MAX, "an integer in [0, 2^31) (0: off)"));
       }},
      {"min_p",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.min_p = num_in(v, k, 0, 1, "a number in [0, 1] (0: off)");
       }},
      {"repeat_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.repeat_penalty =
             num_in(v, k, 1e-3, 100, "a number in [0.001, 100] (1: off)");
       }},
      {"presence_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.presence_penalty =
             num_in(v, k, -100, 100, "a number in [-100, 100] (0: off)");
       }},
      {"frequency_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.frequency_penalty =
             num_in(v, k, -100, 100, "a number in [-100, 100] (0: off)");
       }},
      {"penalty_last_n",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.penalty_last_n = static_cast<int>(
             int_in(v, k, -1, INT32_MAX, "an integer >= -1 (0: off, -1: the whole sequence)"));
       }},
      {"seed",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.seed =
             static_cast<uint64_t>(int_in(v, k, 0, INT64_MAX, "a non-negative integer"));
       }},
  };
  return t;
}

const Table& stopping_table() {
  static const Table t = {
      {"max_tokens", set_max_tokens},
      {"n_predict", set_max_tokens},
      {"ignore_eos",
       [](const json& v, const std::string& k, Config& c) { c.gen.ignore_eos = as_bool(v, k); }},
      {"stop",
       [](const json& v, const std::string& k, Config& c) {
         need(v.is_array(), k, "a list of strings");
         c.gen.stop.clear();
         for (const json& s : v) c.gen.stop.push_back(as_str(s, k + "[]"));
       }},
  };
  return t;
}

const Table& backend_table() {
  static const Table t = {
      {"max_sessions",
       [](const json& v, const std::string& k, Config& c) {
         c.max_sessions = int_in(v, k, 1, 100000, "an integer in [1, 100000]");
       }},
      {"max_sessions_memory_mb",
       [](const json& v, const std::string& k, Config& c) {
         c.max_sessions_memory_mb = as_num(v, k);
         if (c.max_sessions_memory_mb <= 0 || c.max_sessions_memory_mb > 1e7)
           fail(ErrorCode::kInvalidArgument,
                "config key '{}': {} is out of range: expected a number of MB in (0, 1e7]", k,
                c.max_sessions_memory_mb);
       }},
      {"idle_timeout_ms",
       [](const json& v, const std::string& k, Config& c) {
         // Ten years at most: a steady_clock duration in ns must not overflow.
         c.idle_timeout_ms =
             int_in(v, k, 0, 315360000000, "an integer in [0, 315360000000] (0: never)");
       }},
      {"auto_cleanup",
       [](const json& v, const std::string& k, Config& c) { c.auto_cleanup = as_bool(v, k); }},
  };
  return t;
}

const Table& logging_table() {
  static const Table t = {
      {"level",
       [](const json& v, const std::string& k, Config& c) {
         const std::string l = as_str(v, k);
         if (l != "trace" && l != "debug" && l != "info" && l != "warn" && l != "warning" &&
             l != "error" && l != "critical" && l != "off")
           fail(ErrorCode::kInvalidArgument,
                "config key '{}': unknown log level '{}': expected one of trace, debug, info, "
                "warn, error, critical, off",
                k, l);
         c.log_level = l;
       }},
      // Checked when the log is opened (an unwritable file is a warning naming it).
      {"file", [](const json& v, const std::string& k, Config& c) { c.log_file = as_str(v, k); }},
  };
  return t;
}

// An entry whose scale is out of range is skipped with a warning, like any bad adapter entry.
std::vector<engine::AdapterSpec> parse_adapters(const json& v, const std::string& key,
                                                std::vector<std::string>* warnings) {
  need(v.is_array(), key, "a list of {\"path\", \"scale\"} objects");
  std::vector<engine::AdapterSpec> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string k = fmt::format("{}[{}]", key, i);
    need(v[i].is_object() || v[i].is_string(), k, "an object {\"path\", \"scale\"} or a path");
    engine::AdapterSpec s;
    if (v[i].is_string()) {
      s.path = v[i].get<std::string>();
    } else {
      // A missing path stays empty: the entry is skipped with a warning, like any bad adapter.
      if (v[i].contains("path")) s.path = as_str(v[i]["path"], k + ".path");
      if (v[i].contains("scale")) {
        need(v[i]["scale"].is_number(), k + ".scale", "a number");
        const double x = v[i]["scale"].get<double>();
        if (std::string why = bad_scale(x); !why.empty()) {
          if (warnings)
            warnings->push_back(fmt::format("{}.scale: {}: adapter '{}' skipped", k, why, s.path));
          continue;
        }
        s.scale = static_cast<float>(x);
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

std::string bad_scale(double scale) {
  if (!std::isfinite(scale)) return fmt::format("scale {} is not finite", scale);
  if (std::fabs(scale) > kMaxLoraScale)
    return fmt::format("scale {} is beyond +-{}", scale, kMaxLoraScale);
  return "";
}

Config parse_config(std::string_view text, const Config& base, std::vector<std::string>* warnings) {
  Config c = base;
  size_t b = text.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return c;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(ErrorCode::kInvalidArgument, "config is not valid JSON: {}", e.what());
  }
  if (j.is_null()) return c;
  need(j.is_object(), "(top level)", "a JSON object");
  for (const auto& [k, v] : j.items()) {
    if (k == "model") {
      apply(v, k, model_table(), c, warnings);
    } else if (k == "sampling") {
      apply(v, k, sampling_table(), c, warnings);
    } else if (k == "stopping") {
      apply(v, k, stopping_table(), c, warnings);
    } else if (k == "backend") {
      apply(v, k, backend_table(), c, warnings);
    } else if (k == "logging") {
      apply(v, k, logging_table(), c, warnings);
    } else if (k == "lora_adapters") {
      if (v.is_null())
        c.lora_adapters.reset();
      else
        c.lora_adapters = parse_adapters(v, k, warnings);
    } else if (model_table().count(k) || sampling_table().count(k) || stopping_table().count(k)) {
      // Flat keys (runtime params, llama.cpp style): {"temperature": 0.7, "max_tokens": 32}.
      const Table& t = model_table().count(k)      ? model_table()
                       : sampling_table().count(k) ? sampling_table()
                                                   : stopping_table();
      t.at(k)(v, k, c);
    } else if (warnings) {
      warnings->push_back(fmt::format("unknown config key '{}' ignored", k));
    }
  }
  return c;
}

}  // namespace nnpipe::wasi_nn
