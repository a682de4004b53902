// `nnpipe init-model`: a randomly initialised Qwen2 model of a named shape, written as a complete
// Hugging Face directory (config, generation config, weights, tokenizer) that transformers loads.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "arch/config.h"
#include "core/json.h"

namespace nnpipe {

struct InitModelOptions {
  std::string preset = "tiny";
  uint64_t seed = 0;
  fs::path out;
  // tokenizer.json, or a directory holding one (its tokenizer_config.json is copied too).
  // Unset: nnpipe's default tokenizer (built from the embedded corpus).
  std::optional<fs::path> tokenizer;
  std::optional<DType> dtype;  // default: the preset's (float32 tiny, bfloat16 0.5B)
  std::optional<int64_t> vocab_size;
  uint64_t max_shard_bytes = 5'000'000'000;
};

struct InitModelResult {
  ModelConfig config;
  uint64_t parameters = 0;
  uint64_t bytes = 0;  // tensor data bytes
};

// Weights ~ N(0, initializer_range) from Rng(seed) in qwen2_weight_specs order (so a seed always
// gives the same bytes), RMSNorm weights 1, q/k/v biases random too (so a dropped bias shows).
InitModelResult init_model(const InitModelOptions& opt);

// Token facts init-model needs from a tokenizer.json: max id + 1 over vocab and added tokens, and
// the ids of added tokens by content.
struct TokenizerFacts {
  int64_t size = 0;
  std::optional<int64_t> endoftext, im_start, im_end;
};
TokenizerFacts tokenizer_facts(const json& tokenizer_json, const std::string& origin);

// Qwen chat generation defaults (QWEN.md) for the given special token ids.
json qwen_generation_config(int64_t endoftext, std::optional<int64_t> im_end);
// A Qwen2Tokenizer tokenizer_config.json with the ChatML template, for tokenizers that have none.
json qwen_tokenizer_config(const json& tokenizer_json, int64_t model_max_length);

}  // namespace nnpipe
