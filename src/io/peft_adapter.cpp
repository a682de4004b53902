#include "io/peft_adapter.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <set>

#include "arch/qwen2_arch.h"
#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "tensor/convert.h"

namespace nnpipe {
namespace {

// "base_model.model.model.layers.": PEFT's wrapper prefix on the HF layer path.
const std::string& layer_prefix() {
  static const std::string p = std::string(qwen2::kPeftPrefix) + qwen2::kHfLayerPrefix;
  return p;
}

// The block linear modules (q_proj .. down_proj) are the targets nnpipe supports; lm_head is not.
int module_index(std::string_view m) {
  const std::optional<qwen2::Linear> l = qwen2::linear_from_hf(m);
  return l && qwen2::is_block_linear(*l) ? static_cast<int>(*l) : -1;
}

// "q_proj, k_proj, ..., down_proj" for messages.
std::string module_list() {
  std::string out;
  for (int i = 0; i < qwen2::kNumBlockLinears; ++i)
    out += fmt::format("{}{}", i ? ", " : "", qwen2::kLinears[static_cast<size_t>(i)].hf);
  return out;
}

[[noreturn]] void unsupported(const std::string& origin, const std::string& what) {
  fail(ErrorCode::kUnsupported, "{}: {} is not supported by nnpipe", origin, what);
}

const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

bool is_null_or_empty(const json* v) {
  return !v || v->is_null() || ((v->is_object() || v->is_array()) && v->empty());
}

// "<layer>.<parent>.<module>.lora_<A|B>.weight" after the prefix.
bool parse_key(std::string_view name, int64_t& layer, std::string& module, char& which) {
  if (!name.starts_with(layer_prefix())) return false;
  name.remove_prefix(layer_prefix().size());
  auto dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos) return false;
  auto [p, ec] = std::from_chars(name.data(), name.data() + dot, layer);
  if (ec != std::errc() || p != name.data() + dot || (dot > 1 && name[0] == '0')) return false;
  name.remove_prefix(dot + 1);
  for (int i = 0; i < qwen2::kNumBlockLinears; ++i) {
    const qwen2::LinearInfo& m = qwen2::kLinears[static_cast<size_t>(i)];
    std::string want = std::string(m.hf_path) + ".lora_";
    if (name.substr(0, want.size()) != want) continue;
    std::string_view rest = name.substr(want.size());
    if (rest != "A.weight" && rest != "B.weight") return false;
    module = m.hf;
    which = rest[0];
    return true;
  }
  return false;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::optional<std::string_view> lora_module_parent(std::string_view module) {
  const int i = module_index(module);
  if (i < 0) return std::nullopt;
  return qwen2::kLinears[static_cast<size_t>(i)].hf_parent;
}

std::pair<int64_t, int64_t> lora_module_shape(const ModelConfig& c, std::string_view module) {
  const int i = module_index(module);
  if (i < 0) fail(ErrorCode::kInvalidArgument, "unknown LoRA target module \"{}\"", module);
  const auto [out, in] = qwen2_linear_shape(c, static_cast<qwen2::Linear>(i));
  return {in, out};
}

std::string lora_tensor_name(int64_t layer, std::string_view module, char which) {
  auto parent = lora_module_parent(module);
  if (!parent) fail(ErrorCode::kInvalidArgument, "unknown LoRA target module \"{}\"", module);
  return fmt::format("{}{}.{}.{}.lora_{}.weight", layer_prefix(), layer, *parent, module, which);
}

double LoraConfig::scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r))
                    : lora_alpha / static_cast<double>(r);
}

json LoraConfig::to_json() const {
  json j = json::object();  // keys sorted, as PEFT writes them (json.dumps(sort_keys=True))
  for (const char* k :
       {"alora_invocation_tokens", "arrow_config", "auto_mapping", "corda_config", "eva_config",
        "exclude_modules", "kasa_config", "layer_replication", "layers_pattern",
        "layers_to_transform", "lora_ga_config", "megatron_config", "modules_to_save",
        "monteclora_config", "revision", "target_parameters", "trainable_token_indices",
        "use_bdlora", "velora_config"})
    j[k] = nullptr;
  j["alpha_pattern"] = json::object();
  j["rank_pattern"] = json::object();
  j["loftq_config"] = json::object();
  j["base_model_name_or_path"] = base_model_name_or_path ? json(*base_model_name_or_path) : json();
  j["bias"] = "none";
  j["ensure_weight_tying"] = false;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = inference_mode;
  j["init_lora_weights"] = true;
  if (lora_alpha == std::floor(lora_alpha) && std::fabs(lora_alpha) < 1e15)
    j["lora_alpha"] = static_cast<int64_t>(lora_alpha);
  else
    j["lora_alpha"] = lora_alpha;
  j["lora_bias"] = false;
  j["lora_dropout"] = lora_dropout;
  j["megatron_core"] = "megatron.core";
  j["peft_type"] = "LORA";
  j["peft_version"] = "0.21.2";
  j["qalora_group_size"] = 16;
  j["r"] = r;
  j["target_modules"] = target_modules;
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = false;
  j["use_qalora"] = false;
  j["use_rslora"] = use_rslora;
  static const char* const kOwn[] = {"r",
                                     "lora_alpha",
                                     "lora_dropout",
                                     "target_modules",
                                     "use_rslora",
                                     "base_model_name_or_path",
                                     "inference_mode"};
  if (extra.is_object())
    for (const auto& [k, v] : extra.items())
      if (std::find(std::begin(kOwn), std::end(kOwn), k) == std::end(kOwn)) j[k] = v;
  return j;
}

LoraConfig LoraConfig::from_json(const json& j, const std::string& origin) {
  if (!j.is_object())
    fail(ErrorCode::kFormat, "{}: expected a JSON object, got {}", origin, json_type_name(j));
  auto bad = [&](const char* key, const char* want, const json& v) {
    fail(ErrorCode::kFormat, "{}: \"{}\": expected {}, got {}", origin, key, want,
         json_type_name(v));
  };
  LoraConfig c;
  c.extra = j;
  const json* v = field(j, "peft_type");
  if (!v) fail(ErrorCode::kFormat, "{}: missing \"peft_type\" (not a PEFT adapter)", origin);
  if (!v->is_string()) bad("peft_type", "a string", *v);
  if (*v != "LORA") unsupported(origin, "peft_type \"" + v->get<std::string>() + "\"");
  if ((v = field(j, "task_type")) && !v->is_null() && *v != "CAUSAL_LM")
    unsupported(origin, "task_type " + v->dump());
  v = &require_field(j, "r", origin);
  if (!v->is_number_integer() || v->get<int64_t>() <= 0) bad("r", "a positive integer", *v);
  c.r = v->get<int64_t>();
  if ((v = field(j, "lora_alpha"))) {
    if (!v->is_number()) bad("lora_alpha", "a number", *v);
    c.lora_alpha = v->get<double>();
    // JSON has no NaN, but 1e308 parses: alpha / r then overflows f32 (NaN logits).
    if (!std::isfinite(c.lora_alpha) || std::fabs(c.lora_alpha) > kMaxPeftLoraAlpha)
      fail(ErrorCode::kFormat, "{}: \"lora_alpha\": {} is not a finite number in [-{}, {}]", origin,
           c.lora_alpha, kMaxPeftLoraAlpha, kMaxPeftLoraAlpha);
  }
  if ((v = field(j, "lora_dropout"))) {
    if (!v->is_number()) bad("lora_dropout", "a number", *v);
    c.lora_dropout = v->get<double>();
    if (!(c.lora_dropout >= 0 && c.lora_dropout < 1))
      fail(ErrorCode::kFormat, "{}: \"lora_dropout\": {} is not in [0, 1)", origin, c.lora_dropout);
  }
  v = &require_field(j, "target_modules", origin);
  if (v->is_string())
    unsupported(origin, "target_modules as a regular expression (" + v->dump() + ")");
  if (!v->is_array()) bad("target_modules", "a list of module names", *v);
  for (const auto& m : *v) {
    if (!m.is_string()) bad("target_modules", "a list of module names", *v);
    std::string name = m.get<std::string>();
    if (module_index(name) < 0)
      fail(ErrorCode::kFormat,
           "{}: \"target_modules\": unknown module \"{}\" (a Qwen2 adapter targets {})", origin,
           name, module_list());
    if (std::find(c.target_modules.begin(), c.target_modules.end(), name) == c.target_modules.end())
      c.target_modules.push_back(name);
  }
  if (c.target_modules.empty()) fail(ErrorCode::kFormat, "{}: \"target_modules\" is empty", origin);
  if ((v = field(j, "use_rslora")) && !v->is_null()) {
    if (!v->is_boolean()) bad("use_rslora", "true or false", *v);
    c.use_rslora = v->get<bool>();
  }
  if ((v = field(j, "inference_mode")) && v->is_boolean()) c.inference_mode = v->get<bool>();
  if ((v = field(j, "base_model_name_or_path")) && !v->is_null()) {
    if (!v->is_string()) bad("base_model_name_or_path", "a string or null", *v);
    c.base_model_name_or_path = v->get<std::string>();
  }
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (!is_null_or_empty(field(j, k)))
      unsupported(origin, fmt::format("a non-empty \"{}\" (per-module ranks/alphas)", k));
  for (const char* k : {"modules_to_save", "layers_to_transform", "layers_pattern",
                        "layer_replication", "exclude_modules", "target_parameters",
                        "trainable_token_indices", "alora_invocation_tokens"})
    if (!is_null_or_empty(field(j, k))) unsupported(origin, fmt::format("\"{}\"", k));
  for (const char* k : {"use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"})
    if ((v = field(j, k)) && v->is_boolean() && v->get<bool>())
      unsupported(origin, fmt::format("\"{}\": true", k));
  if ((v = field(j, "bias")) && !v->is_null() && *v != "none")
    unsupported(origin, "\"bias\": " + v->dump());
  return c;
}

const LoraModule* PeftAdapter::find(int64_t layer, std::string_view module) const {
  for (const auto& m : modules)
    if (m.layer == layer && m.module == module) return &m;
  return nullptr;
}

PeftAdapter PeftAdapter::load(const fs::path& dir) {
  const fs::path cfg_path = dir / "adapter_config.json";
  const fs::path st_path = dir / "adapter_model.safetensors";
  if (!fs::exists(cfg_path))
    fail(ErrorCode::kNotFound, "{}: no adapter_config.json (not a PEFT adapter directory)",
         dir.string());
  if (!fs::exists(st_path)) {
    if (fs::exists(dir / "adapter_model.bin"))
      unsupported(st_path.string(), "adapter_model.bin (pickle); only .safetensors");
    fail(ErrorCode::kNotFound, "{}: missing", st_path.string());
  }
  PeftAdapter a;
  a.config = LoraConfig::from_json(read_json_file(cfg_path), cfg_path.string());
  const SafetensorsFile f = SafetensorsFile::open(st_path);
  const std::string origin = st_path.string();
  const int64_t r = a.config.r;
  std::map<std::pair<int64_t, int>, LoraModule> found;
  bool first = true;
  for (const TensorView& t : f.tensors()) {
    int64_t layer = 0;
    std::string module;
    char which = 0;
    if (!parse_key(t.name, layer, module, which))
      fail(ErrorCode::kFormat, "{}: unexpected tensor \"{}\" (not a Qwen2 LoRA A/B weight)", origin,
           t.name);
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16)
      unsupported(origin, fmt::format("{}: dtype {}", t.name, dtype_name(t.dtype)));
    if (first) a.dtype = t.dtype;
    first = false;
    if (std::find(a.config.target_modules.begin(), a.config.target_modules.end(), module) ==
        a.config.target_modules.end())
      fail(ErrorCode::kFormat, "{}: {}: module {} is not in target_modules", origin, t.name,
           module);
    if (t.shape.size() != 2)
      fail(ErrorCode::kFormat, "{}: {}: shape {} is not 2-D", origin, t.name, shape_str(t.shape));
    const int64_t rdim = which == 'A' ? t.shape[0] : t.shape[1];
    if (rdim != r)
      fail(ErrorCode::kFormat,
           "{}: {}: shape {} does not have rank r = {} from adapter_config.json", origin, t.name,
           shape_str(t.shape), r);
    LoraModule& m = found[{layer, module_index(module)}];
    m.layer = layer;
    m.module = module;
    if (which == 'A') {
      m.in = t.shape[1];
      m.A = to_f32(t.dtype, t.data);
    } else {
      m.out = t.shape[0];
      m.B = to_f32(t.dtype, t.data);
    }
  }
  for (auto& [key, m] : found) {
    if (m.A.empty() || m.B.empty())
      fail(ErrorCode::kFormat, "{}: {} has no matching {}", origin,
           lora_tensor_name(m.layer, m.module, m.A.empty() ? 'B' : 'A'),
           lora_tensor_name(m.layer, m.module, m.A.empty() ? 'A' : 'B'));
    a.modules.push_back(std::move(m));
  }
  if (a.modules.empty()) fail(ErrorCode::kFormat, "{}: no LoRA tensors", origin);
  return a;
}

void PeftAdapter::validate(const ModelConfig& model, const std::string& origin) const {
  std::set<std::pair<int64_t, std::string>> seen;
  for (const auto& m : modules) {
    const std::string nameA = lora_tensor_name(m.layer, m.module, 'A');
    if (m.layer < 0 || m.layer >= model.num_hidden_layers)
      fail(ErrorCode::kFormat,
           "{}: {}: layer {} is out of range, the model has {} layers (adapter for another "
           "model?)",
           origin, nameA, m.layer, model.num_hidden_layers);
    if (module_index(m.module) < 0)
      fail(ErrorCode::kFormat, "{}: unknown module \"{}\"", origin, m.module);
    if (std::find(config.target_modules.begin(), config.target_modules.end(), m.module) ==
        config.target_modules.end())
      fail(ErrorCode::kFormat, "{}: {}: module {} is not in target_modules", origin, nameA,
           m.module);
    if (!seen.insert({m.layer, m.module}).second)
      fail(ErrorCode::kFormat, "{}: {}: duplicate module", origin, nameA);
    const auto [in, out] = lora_module_shape(model, m.module);
    const std::vector<int64_t> a_shape = {config.r, m.in}, b_shape = {m.out, config.r};
    if (m.in != in)
      fail(ErrorCode::kFormat,
           "{}: {}: shape {} but the model's {} takes {} inputs, expected [{}, {}] (adapter for "
           "another model?)",
           origin, nameA, shape_str(a_shape), m.module, in, config.r, in);
    if (m.out != out)
      fail(ErrorCode::kFormat,
           "{}: {}: shape {} but the model's {} has {} outputs, expected [{}, {}] (adapter for "
           "another model?)",
           origin, lora_tensor_name(m.layer, m.module, 'B'), shape_str(b_shape), m.module, out, out,
           config.r);
    if (m.A.size() != static_cast<size_t>(config.r * m.in) ||
        m.B.size() != static_cast<size_t>(m.out * config.r))
      fail(ErrorCode::kInternal, "{}: {}: data size does not match its shape", origin, nameA);
  }
  for (int64_t l = 0; l < model.num_hidden_layers; ++l)
    for (const auto& mod : config.target_modules)
      if (!seen.count({l, mod}))
        fail(ErrorCode::kFormat, "{}: missing {} (target module {} of layer {})", origin,
             lora_tensor_name(l, mod, 'A'), mod, l);
}

void PeftAdapter::save(const fs::path& dir) const {
  StagingDir stage(dir);
  std::vector<std::vector<uint8_t>> bufs;
  bufs.reserve(modules.size() * 2);
  std::vector<TensorRef> refs;
  for (const auto& m : modules) {
    bufs.push_back(from_f32(m.A, dtype));
    refs.push_back(
        {lora_tensor_name(m.layer, m.module, 'A'), dtype, {config.r, m.in}, bufs.back()});
    bufs.push_back(from_f32(m.B, dtype));
    refs.push_back(
        {lora_tensor_name(m.layer, m.module, 'B'), dtype, {m.out, config.r}, bufs.back()});
  }
  write_safetensors(stage.path() / "adapter_model.safetensors", refs, {{"format", "pt"}});
  write_json_file(stage.path() / "adapter_config.json", config.to_json());
  stage.commit();
}

PeftAdapter PeftAdapter::init(const ModelConfig& model, LoraConfig config, uint64_t seed) {
  if (config.r <= 0) fail(ErrorCode::kInvalidArgument, "LoRA rank must be > 0, got {}", config.r);
  if (config.target_modules.empty())
    fail(ErrorCode::kInvalidArgument, "LoRA target_modules is empty");
  for (const auto& m : config.target_modules)
    if (module_index(m) < 0)
      fail(ErrorCode::kInvalidArgument, "unknown LoRA target module \"{}\"", m);
  for (const auto& m : config.target_modules) {
    const auto [in, out] = lora_module_shape(model, m);
    if (config.r > std::min(in, out))
      fail(ErrorCode::kInvalidArgument,
           "LoRA rank {} exceeds min(in, out) = {} of {} ({} -> {}): use a rank <= {} (or leave "
           "{} out of the target modules)",
           config.r, std::min(in, out), m, in, out, std::min(in, out), m);
  }
  std::vector<std::string> mods = config.target_modules;
  std::sort(mods.begin(), mods.end(), [](const std::string& x, const std::string& y) {
    return module_index(x) < module_index(y);
  });
  PeftAdapter a;
  a.config = std::move(config);
  Rng rng(seed);
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    for (const auto& mod : mods) {
      LoraModule m;
      m.layer = l;
      m.module = mod;
      std::tie(m.in, m.out) = lora_module_shape(model, mod);
      // torch kaiming_uniform_(a=sqrt(5)), fan_in = in: gain = sqrt(2 / (1 + a^2)),
      // bound = sqrt(3) * gain / sqrt(fan_in) = 1 / sqrt(fan_in).
      const double a_ = std::sqrt(5.0);
      const double gain = std::sqrt(2.0 / (1.0 + a_ * a_));
      const double bound = std::sqrt(3.0) * gain / std::sqrt(static_cast<double>(m.in));
      m.A.resize(static_cast<size_t>(a.config.r * m.in));
      for (float& x : m.A) x = static_cast<float>(-bound + 2.0 * bound * rng.uniform());
      m.B.assign(static_cast<size_t>(m.out * a.config.r), 0.0f);
      a.modules.push_back(std::move(m));
    }
  }
  return a;
}

}  // namespace nnpipe
