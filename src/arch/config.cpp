#include "arch/config.h"

#include <cmath>
#include <set>

#include "core/error.h"

namespace nnpipe {
namespace {

constexpr const char* kArch = "Qwen2ForCausalLM";

// Keys ModelConfig models; everything else goes to `extra`.
const std::set<std::string>& known_keys() {
  static const std::set<std::string> k = {"architectures",
                                          "model_type",
                                          "vocab_size",
                                          "hidden_size",
                                          "intermediate_size",
                                          "num_hidden_layers",
                                          "num_attention_heads",
                                          "num_key_value_heads",
                                          "head_dim",
                                          "max_position_embeddings",
                                          "rope_theta",
                                          "rms_norm_eps",
                                          "tie_word_embeddings",
                                          "torch_dtype",
                                          "dtype",
                                          "bos_token_id",
                                          "eos_token_id",
                                          "hidden_act",
                                          "attention_dropout",
                                          "use_sliding_window",
                                          "sliding_window",
                                          "max_window_layers",
                                          "initializer_range",
                                          "rope_scaling"};
  return k;
}

class Reader {
 public:
  Reader(const json& j, const std::string& origin) : j_(j), o_(origin) {}

  const json* get(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  int64_t integer(const char* key, std::optional<int64_t> def = std::nullopt) const {
    const json* v = get(key);
    if (!v) {
      if (def) return *def;
      fail(ErrorCode::kFormat, "{}: missing \"{}\"", o_, key);
    }
    if (!v->is_number_integer())
      fail(ErrorCode::kFormat, "{}: \"{}\" must be an integer, got {}", o_, key,
           json_type_name(*v));
    return v->get<int64_t>();
  }
  std::optional<int64_t> opt_integer(const char* key) const {
    const json* v = get(key);
    if (!v || v->is_null()) return std::nullopt;
    return integer(key);
  }
  double number(const char* key, double def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_number())
      fail(ErrorCode::kFormat, "{}: \"{}\" must be a number, got {}", o_, key, json_type_name(*v));
    return v->get<double>();
  }
  bool boolean(const char* key, bool def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_boolean())
      fail(ErrorCode::kFormat, "{}: \"{}\" must be true or false, got {}", o_, key,
           json_type_name(*v));
    return v->get<bool>();
  }
  std::string string(const char* key, const char* def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_string())
      fail(ErrorCode::kFormat, "{}: \"{}\" must be a string, got {}", o_, key, json_type_name(*v));
    return v->get<std::string>();
  }

 private:
  const json& j_;
  std::string
      o_;  // a copy: nested readers are built from temporaries (origin + ": rope_parameters")
};

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& origin) {
  if (!j.is_object())
    fail(ErrorCode::kFormat, "{}: expected a JSON object, got {}", origin, json_type_name(j));
  Reader r(j, origin);
  ModelConfig c;

  if (!r.get("model_type")) fail(ErrorCode::kFormat, "{}: missing \"model_type\"", origin);
  std::string model_type = r.string("model_type", "");
  if (model_type != "qwen2")
    fail(ErrorCode::kUnsupported,
         "{}: model_type \"{}\" is not supported (nnpipe handles \"qwen2\": Qwen1.5/2/2.5)", origin,
         model_type);
  if (const json* a = r.get("architectures")) {
    if (!a->is_array()) fail(ErrorCode::kFormat, "{}: \"architectures\" must be a list", origin);
    for (const json& name : *a)
      if (!name.is_string() || name.get<std::string>() != kArch)
        fail(ErrorCode::kUnsupported, "{}: architecture {} is not supported (expected \"{}\")",
             origin, name.dump(), kArch);
  }

  c.vocab_size = r.integer("vocab_size");
  c.hidden_size = r.integer("hidden_size");
  c.intermediate_size = r.integer("intermediate_size");
  c.num_hidden_layers = r.integer("num_hidden_layers");
  c.num_attention_heads = r.integer("num_attention_heads");
  c.num_key_value_heads = r.integer("num_key_value_heads", c.num_attention_heads);
  if (auto hd = r.opt_integer("head_dim")) {
    c.head_dim = *hd;
    c.head_dim_given = true;
  } else {
    c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  }
  c.max_position_embeddings = r.integer("max_position_embeddings", 32768);
  c.rope_theta = r.number("rope_theta", 10000.0);
  // transformers 5 writes rope_parameters {"rope_type": "default", "rope_theta": ...} (kept in
  // extra).
  if (const json* rp = r.get("rope_parameters"); rp && !rp->is_null()) {
    if (!rp->is_object())
      fail(ErrorCode::kFormat, "{}: \"rope_parameters\" must be an object", origin);
    Reader rr(*rp, origin + ": rope_parameters");
    std::string type = rr.string("rope_type", "default");
    if (type != "default")
      fail(ErrorCode::kUnsupported, "{}: rope_parameters: rope_type \"{}\" is not supported",
           origin, type);
    c.rope_theta = rr.number("rope_theta", c.rope_theta);
  }
  if (const json* rs = r.get("rope_scaling"); rs && !rs->is_null())
    fail(ErrorCode::kUnsupported, "{}: rope_scaling {} is not supported (only null)", origin,
         rs->dump());
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);

  const char* dtype_key = r.get("dtype") ? "dtype" : "torch_dtype";
  std::string dt = r.string(dtype_key, "float32");
  auto d = dtype_from_torch_name(dt);
  if (!d || (*d != DType::kF32 && *d != DType::kBF16 && *d != DType::kF16))
    fail(ErrorCode::kUnsupported, "{}: \"{}\" \"{}\" is not supported (float32, bfloat16, float16)",
         origin, dtype_key, dt);
  c.torch_dtype = *d;

  c.bos_token_id = r.opt_integer("bos_token_id");
  if (const json* e = r.get("eos_token_id"); e && !e->is_null()) {
    if (e->is_array()) {
      c.eos_is_list = true;
      for (const json& id : *e) {
        if (!id.is_number_integer())
          fail(ErrorCode::kFormat, "{}: \"eos_token_id\" entries must be integers, got {}", origin,
               json_type_name(id));
        c.eos_token_id.push_back(id.get<int64_t>());
      }
    } else {
      c.eos_token_id.push_back(r.integer("eos_token_id"));
    }
  }
  c.hidden_act = r.string("hidden_act", "silu");
  c.attention_dropout = r.number("attention_dropout", 0.0);
  c.use_sliding_window = r.boolean("use_sliding_window", false);
  c.sliding_window = r.opt_integer("sliding_window");
  c.max_window_layers = r.integer("max_window_layers", 28);
  c.initializer_range = r.number("initializer_range", 0.02);

  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known_keys().count(it.key())) c.extra[it.key()] = *it;
  c.validate(origin);
  return c;
}

ModelConfig ModelConfig::load(const fs::path& config_json) {
  return from_json(read_json_file(config_json), config_json.string());
}

void ModelConfig::validate(const std::string& origin) const {
  auto positive = [&](const char* name, int64_t v) {
    if (v <= 0) fail(ErrorCode::kFormat, "{}: \"{}\" must be positive, got {}", origin, name, v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  auto at_most = [&](const char* name, int64_t v, int64_t limit) {
    if (v > limit)
      fail(ErrorCode::kFormat, "{}: \"{}\" is {}, above nnpipe's limit of {}", origin, name, v,
           limit);
  };
  at_most("vocab_size", vocab_size, ModelLimits::kMaxVocab);
  at_most("hidden_size", hidden_size, ModelLimits::kMaxHidden);
  at_most("intermediate_size", intermediate_size, ModelLimits::kMaxIntermediate);
  at_most("num_hidden_layers", num_hidden_layers, ModelLimits::kMaxLayers);
  at_most("num_attention_heads", num_attention_heads, ModelLimits::kMaxHeads);
  at_most("num_key_value_heads", num_key_value_heads, ModelLimits::kMaxHeads);
  at_most("head_dim", head_dim, ModelLimits::kMaxHeadDim);
  at_most("max_position_embeddings", max_position_embeddings, ModelLimits::kMaxPositions);
  if (!head_dim_given && hidden_size % num_attention_heads != 0)
    fail(ErrorCode::kFormat, "{}: num_attention_heads {} does not divide hidden_size {}", origin,
         num_attention_heads, hidden_size);
  if (num_attention_heads % num_key_value_heads != 0)
    fail(ErrorCode::kFormat, "{}: num_key_value_heads {} does not divide num_attention_heads {}",
         origin, num_key_value_heads, num_attention_heads);
  if (head_dim % 2 != 0)
    fail(ErrorCode::kFormat, "{}: head_dim {} must be even for rotary embeddings", origin,
         head_dim);
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
    fail(ErrorCode::kFormat, "{}: \"rms_norm_eps\" must be positive and finite, got {}", origin,
         rms_norm_eps);
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    fail(ErrorCode::kFormat, "{}: \"rope_theta\" must be positive and finite, got {}", origin,
         rope_theta);
  if (hidden_act != "silu")
    fail(ErrorCode::kUnsupported, "{}: hidden_act \"{}\" is not supported (only \"silu\")", origin,
         hidden_act);
}

json ModelConfig::to_json() const {
  json j = extra;
  j["architectures"] = json::array({kArch});
  j["model_type"] = "qwen2";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  if (head_dim_given) j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object())
    (*it)["rope_theta"] = rope_theta;  // keep both spellings in agreement
  j["rope_scaling"] = nullptr;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = std::string(dtype_torch_name(torch_dtype));
  j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  if (eos_token_id.empty())
    j["eos_token_id"] = nullptr;
  else if (eos_is_list)
    j["eos_token_id"] = eos_token_id;
  else
    j["eos_token_id"] = eos_token_id[0];
  j["hidden_act"] = hidden_act;
  j["attention_dropout"] = attention_dropout;
  j["use_sliding_window"] = use_sliding_window;
  j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  j["max_window_layers"] = max_window_layers;
  j["initializer_range"] = initializer_range;
  return j;
}

std::vector<std::string> ModelConfig::preset_names() {
  return {"tiny", "small", "qwen1.5-0.5b", "qwen2.5-0.5b"};
}

ModelConfig ModelConfig::preset(std::string_view name, int64_t tokenizer_size) {
  ModelConfig c;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = true;
  c.bos_token_id = 151643;
  c.eos_token_id = {151645};
  c.extra["use_cache"] = true;
  if (name == "tiny" || name == "small") {
    // small: rows of 256 and 768, whole K-quant blocks (engine tests of Q4_K_M etc.)
    const bool small = name == "small";
    c.vocab_size = (tokenizer_size + 63) / 64 * 64;
    c.hidden_size = small ? 256 : 64;
    c.intermediate_size = small ? 768 : 176;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 2048;
    c.max_window_layers = 2;
    c.torch_dtype = DType::kF32;
  } else if (name == "qwen1.5-0.5b" || name == "qwen2.5-0.5b") {
    bool v15 = name == "qwen1.5-0.5b";
    c.vocab_size = 151936;
    c.hidden_size = v15 ? 1024 : 896;
    c.intermediate_size = v15 ? 2816 : 4864;
    c.num_hidden_layers = 24;
    c.num_attention_heads = v15 ? 16 : 14;
    c.num_key_value_heads = v15 ? 16 : 2;
    c.max_position_embeddings = 32768;
    c.max_window_layers = 21;
    c.torch_dtype = DType::kBF16;
  } else {
    fail(ErrorCode::kInvalidArgument,
         "unknown preset \"{}\" (known: tiny, small, qwen1.5-0.5b, qwen2.5-0.5b)", name);
  }
  c.sliding_window = c.max_position_embeddings;
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (c.vocab_size < tokenizer_size)
    fail(ErrorCode::kInvalidArgument,
         "preset {}: vocab_size {} is smaller than the tokenizer ({} tokens)", name, c.vocab_size,
         tokenizer_size);
  c.validate(fmt::format("preset {}", name));
  return c;
}

}  // namespace nnpipe
