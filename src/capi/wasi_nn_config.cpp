#include "capi/wasi_nn_config.h"

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
  need(v.is_number_integer() ||
           (v.is_number_float() && v.get<double>() == static_cast<int64_t>(v.get<double>())),
       key, "an integer");
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
}
double as_num(const json& v, const std::string& key) {
  need(v.is_number(), key, "a number");
  return v.get<double>();
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

const Table& model_table() {
  static const Table t = {
      {"n_gpu_layers",
       [](const json& v, const std::string& k, Config& c) {
         c.n_gpu_layers = as_int(v, k);
         c.n_gpu_layers_set = true;
       }},
      {"ctx_size",
       [](const json& v, const std::string& k, Config& c) { c.ctx_size = as_int(v, k); }},
      {"n_ctx", [](const json& v, const std::string& k, Config& c) { c.ctx_size = as_int(v, k); }},
      {"n_predict",
       [](const json& v, const std::string& k, Config& c) { c.gen.max_tokens = as_int(v, k); }},
      {"max_tokens",
       [](const json& v, const std::string& k, Config& c) { c.gen.max_tokens = as_int(v, k); }},
      {"batch_size",
       [](const json& v, const std::string& k, Config& c) { c.batch_size = as_int(v, k); }},
      {"n_batch",
       [](const json& v, const std::string& k, Config& c) { c.batch_size = as_int(v, k); }},
      {"threads", [](const json& v, const std::string& k,
                     Config& c) { c.threads = static_cast<int>(as_int(v, k)); }},
      {"system_prompt",
       [](const json& v, const std::string& k, Config& c) { c.system_prompt = as_str(v, k); }},
  };
  return t;
}

const Table& sampling_table() {
  static const Table t = {
      {"temperature",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.temperature = static_cast<float>(as_num(v, k));
       }},
      {"temp", [](const json& v, const std::string& k,
                  Config& c) { c.gen.sampling.temperature = static_cast<float>(as_num(v, k)); }},
      {"top_p", [](const json& v, const std::string& k,
                   Config& c) { c.gen.sampling.top_p = static_cast<float>(as_num(v, k)); }},
      {"top_k", [](const json& v, const std::string& k,
                   Config& c) { c.gen.sampling.top_k = static_cast<int>(as_int(v, k)); }},
      {"min_p", [](const json& v, const std::string& k,
                   Config& c) { c.gen.sampling.min_p = static_cast<float>(as_num(v, k)); }},
      {"repeat_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.repeat_penalty = static_cast<float>(as_num(v, k));
       }},
      {"presence_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.presence_penalty = static_cast<float>(as_num(v, k));
       }},
      {"frequency_penalty",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.frequency_penalty = static_cast<float>(as_num(v, k));
       }},
      {"penalty_last_n",
       [](const json& v, const std::string& k, Config& c) {
         c.gen.sampling.penalty_last_n = static_cast<int>(as_int(v, k));
       }},
      {"seed",
       [](const json& v, const std::string& k, Config& c) {
         int64_t s = as_int(v, k);
         need(s >= 0, k, "a non-negative integer");
         c.gen.sampling.seed = static_cast<uint64_t>(s);
       }},
  };
  return t;
}

const Table& stopping_table() {
  static const Table t = {
      {"max_tokens",
       [](const json& v, const std::string& k, Config& c) { c.gen.max_tokens = as_int(v, k); }},
      {"n_predict",
       [](const json& v, const std::string& k, Config& c) { c.gen.max_tokens = as_int(v, k); }},
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
         c.max_sessions = as_int(v, k);
         need(c.max_sessions >= 1, k, "an integer >= 1");
       }},
      {"idle_timeout_ms",
       [](const json& v, const std::string& k, Config& c) { c.idle_timeout_ms = as_int(v, k); }},
      {"auto_cleanup",
       [](const json& v, const std::string& k, Config& c) { c.auto_cleanup = as_bool(v, k); }},
  };
  return t;
}

const Table& logging_table() {
  static const Table t = {
      {"level", [](const json& v, const std::string& k, Config& c) { c.log_level = as_str(v, k); }},
      {"file", [](const json& v, const std::string& k, Config& c) { c.log_file = as_str(v, k); }},
  };
  return t;
}

std::vector<engine::AdapterSpec> parse_adapters(const json& v, const std::string& key) {
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
      if (v[i].contains("scale")) s.scale = static_cast<float>(as_num(v[i]["scale"], k + ".scale"));
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

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
        c.lora_adapters = parse_adapters(v, k);
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
