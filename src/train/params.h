// Parameters of full and LoRA fine-tuning runs, with strict JSON (de)serialisation: unknown keys
// and wrongly typed values are errors naming the key; validate() checks ranges.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "arch/qwen2_arch.h"
#include "core/json.h"

namespace nnpipe {

struct FinetuneFullParams {
  std::string model_path;  // base model directory
  std::string dataset_path;
  std::string output_dir;
  int64_t num_epochs = 1;
  int64_t batch_size = 1;
  double learning_rate = 2e-5;
  int64_t max_seq_len = 2048;
  int64_t gradient_accumulation_steps = 1;
  int64_t warmup_steps = 0;
  std::string lr_scheduler = "linear";  // constant | linear | cosine
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // <= 0 disables clipping
  uint64_t seed = 42;
  int64_t save_steps = 0;  // 0: only at the end
  int64_t logging_steps = 1;
  int64_t max_steps = -1;  // > 0: stop after this many optimizer steps (overrides epochs)
  bool shuffle = true;     // reshuffle the examples every epoch (seeded)
  std::string output_dtype = "auto";  // auto (the input checkpoint's) | f32 | bf16 | f16

  json to_json() const;
  // Throws kInvalidArgument "<origin>: <key>: ..." for unknown keys and wrong types.
  static FinetuneFullParams from_json(const json& j, const std::string& origin);
  // Throws kInvalidArgument "<origin>: <key>: ..." for out-of-range values.
  void validate(const std::string& origin) const;
  // A warning when max_seq_len lets examples run past the model's context length (positions the
  // model was never trained on; attention memory grows with the square); nullopt otherwise.
  std::optional<std::string> context_warning(int64_t max_position_embeddings) const;
};

inline const std::vector<std::string>& lora_all_linear_modules() {
  static const std::vector<std::string> kAll = [] {
    std::vector<std::string> v;
    for (int i = 0; i < qwen2::kNumBlockLinears; ++i)
      v.emplace_back(qwen2::kLinears[static_cast<size_t>(i)].hf);
    return v;
  }();
  return kAll;
}

struct FinetuneLoraParams : FinetuneFullParams {
  int64_t lora_rank = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  std::vector<std::string> target_modules = lora_all_linear_modules();
  bool use_rslora = false;
  std::optional<std::string> checkpoint_lora;  // adapter directory to continue training from
  // f32 (default: transformers' fp32 numerics) | bf16: the frozen base's bf16 matrices multiply
  // bf16-rounded activations with f32 accumulation (Numerics::kTorchBf16), as a bf16 model in
  // torch does; no effect on f32/f16 weights.
  std::string matmul_dtype = "f32";

  json to_json() const;
  static FinetuneLoraParams from_json(const json& j, const std::string& origin);
  void validate(const std::string& origin) const;
};

}  // namespace nnpipe
