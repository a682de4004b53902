// PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors), read and
// written as PEFT 0.21 does, validated against a Qwen2 ModelConfig, and initialised like PEFT
// (A kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zeros).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "arch/config.h"
#include "core/json.h"
#include "tensor/dtype.h"

namespace nnpipe {

// |lora_alpha| accepted from an adapter_config.json: beyond it, alpha / r overflows the f32
// products (the engine's kMaxLoraAlpha is the same number).
inline constexpr double kMaxPeftLoraAlpha = 1e6;

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules;  // subset of the seven Qwen2 linear layers
  bool use_rslora = false;
  std::optional<std::string> base_model_name_or_path;
  bool inference_mode = true;
  // The adapter_config.json this was read from: its other fields (task_type, auto_mapping,
  // peft_version, ...) are written back unchanged.
  json extra = json::object();

  // alpha / r, or alpha / sqrt(r) with rsLoRA.
  double scaling() const;
  // adapter_config.json content with every field PEFT 0.21.2 writes.
  json to_json() const;
  // Errors name `origin` and the field; unsupported features (DoRA, rank/alpha patterns, bias,
  // fan_in_fan_out, modules_to_save, layers_to_transform, regex target_modules, ...) are
  // kUnsupported.
  static LoraConfig from_json(const json& j, const std::string& origin);
};

// The A/B matrices of one adapted linear layer: A is [r, in], B is [out, r] (row-major floats).
struct LoraModule {
  int64_t layer = 0;
  std::string module;  // "q_proj", ..., "down_proj"
  int64_t in = 0, out = 0;
  std::vector<float> A;
  std::vector<float> B;
};

// "self_attn" for q/k/v/o_proj, "mlp" for gate/up/down_proj; nullopt for anything else.
std::optional<std::string_view> lora_module_parent(std::string_view module);
// [in, out] of a module in a model; throws kInvalidArgument for unknown modules.
std::pair<int64_t, int64_t> lora_module_shape(const ModelConfig& c, std::string_view module);
// "base_model.model.model.layers.{layer}.{parent}.{module}.lora_{A|B}.weight"
std::string lora_tensor_name(int64_t layer, std::string_view module, char which);

struct PeftAdapter {
  LoraConfig config;
  std::vector<LoraModule> modules;  // sorted by (layer, module order q,k,v,o,gate,up,down)
  DType dtype = DType::kF32;        // tensor dtype of the file (kept when rewriting)

  // Reads a PEFT adapter directory (F32, BF16 or F16 tensors). Errors name the file and tensor.
  static PeftAdapter load(const fs::path& dir);
  // Writes adapter_config.json and adapter_model.safetensors atomically (StagingDir); `dir` is
  // replaced if it exists.
  void save(const fs::path& dir) const;
  // Checks layers, modules and shapes against the model: every (layer, target module) present
  // once with A [r, in] and B [out, r]. Throws kFormat "<origin>: <tensor>: ... (adapter for
  // another model?)".
  void validate(const ModelConfig& model, const std::string& origin) const;

  const LoraModule* find(int64_t layer, std::string_view module) const;
  // A fresh adapter for every layer and every target module, A ~ U(-1/sqrt(in), 1/sqrt(in)) from
  // Rng(seed) (modules in sorted order, A row-major), B = 0. Throws kInvalidArgument when r
  // exceeds min(in, out) of a target module (a rank no matrix of that shape has).
  static PeftAdapter init(const ModelConfig& model, LoraConfig config, uint64_t seed);
};

}  // namespace nnpipe
