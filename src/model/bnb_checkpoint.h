// Reading bitsandbytes checkpoints: Hugging Face directories whose config.json has a
// quantization_config with quant_method "bitsandbytes" (LLM.int8: weight int8 + SCB +
// weight_format; 4-bit: packed weight + absmax + quant_map [+ nested_absmax, nested_quant_map] +
// quant_state.bitsandbytes__nf4/fp4 JSON), as transformers saves them and `nnpipe quantize`
// writes them. Every weight is dequantized to f32 the way bitsandbytes dequantizes it.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "arch/config.h"
#include "core/json.h"

namespace nnpipe {

// True when `config` (a parsed config.json) declares a bitsandbytes quantization.
bool is_bnb_config(const json& config);
// True when dir/config.json exists and declares one (false for anything unreadable).
bool is_bnb_checkpoint(const fs::path& dir);

struct DequantizedModel {
  ModelConfig config;
  // Every tensor of qwen2_weight_specs (a tied model has no lm_head.weight) in f32.
  std::map<std::string, std::vector<float>> weights;
};

// Loads and validates every tensor (names, dtypes, shapes, quant_state fields, code tables);
// errors name the file, the tensor and the problem (kFormat / kUnsupported / kNotFound).
DequantizedModel load_bnb_checkpoint(const fs::path& dir);

}  // namespace nnpipe
