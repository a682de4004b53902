// ModelConfig: the config.json of a Qwen2-architecture model (Qwen1.5, Qwen2, Qwen2.5), validated,
// with unknown keys kept in `extra` so that reading and writing a config loses nothing.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "tensor/dtype.h"

namespace nnpipe {

// Upper bounds on a config's sizes, far above any released Qwen-family (or other) model, so that
// a hostile config.json or GGUF header cannot make nnpipe size anything by an absurd number.
// The tensors present are checked as well; these limits also keep every derived product (q_dim,
// vocab x hidden, ...) far from int64 overflow.
struct ModelLimits {
  static constexpr int64_t kMaxLayers = 1024;
  static constexpr int64_t kMaxHidden = 65536;
  static constexpr int64_t kMaxIntermediate = 1 << 20;
  static constexpr int64_t kMaxVocab = 1 << 24;
  static constexpr int64_t kMaxHeads = 1024;
  static constexpr int64_t kMaxHeadDim = 4096;
  static constexpr int64_t kMaxPositions = 1 << 24;
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  bool head_dim_given = false;      // written back only if the file had it
  int64_t max_position_embeddings = 32768;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::kF32;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_id;  // one id or a list, as in the file
  bool eos_is_list = false;
  std::string hidden_act = "silu";
  double attention_dropout = 0.0;
  bool use_sliding_window = false;
  std::optional<int64_t> sliding_window;
  int64_t max_window_layers = 28;
  double initializer_range = 0.02;
  // Every other key of config.json (transformers_version, use_cache, rope_parameters, ...).
  json extra = json::object();

  // Parses and validates; errors name `origin` and the key. Accepts the transformers 5 spellings
  // ("dtype", "rope_parameters") too.
  static ModelConfig from_json(const json& j, const std::string& origin);
  static ModelConfig load(const fs::path& config_json);
  // config.json content (keys sorted, like transformers writes it).
  json to_json() const;
  // Throws kFormat "<origin>: <what>" if the sizes are inconsistent or beyond ModelLimits.
  void validate(const std::string& origin) const;

  // Named shapes: "tiny", "qwen1.5-0.5b", "qwen2.5-0.5b". `tokenizer_size` (max id + 1) sets the
  // tiny preset's vocab (rounded up to a multiple of 64) and is checked against the others'.
  static ModelConfig preset(std::string_view name, int64_t tokenizer_size);
  static std::vector<std::string> preset_names();

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

}  // namespace nnpipe
