// The tensors of a Qwen2 checkpoint in Hugging Face naming, with their shapes derived from the
// config: the single source of truth for loading, checking, initialising and writing weights.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "arch/config.h"
#include "arch/qwen2_arch.h"

namespace nnpipe {

enum class WeightKind {
  kEmbedding,  // model.embed_tokens.weight, lm_head.weight
  kMatrix,     // linear layer weight [out, in]
  kBias,       // q/k/v_proj.bias [out]
  kNorm,       // RMSNorm weight [H], initialised to 1
};

struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
  WeightKind kind;
};

// A table dimension (arch/qwen2_arch.h) of this model.
int64_t qwen2_dim(const ModelConfig& c, qwen2::Dim d);
// [out, in] of a linear module's weight.
std::pair<int64_t, int64_t> qwen2_linear_shape(const ModelConfig& c, qwen2::Linear l);
// "model.layers.{layer}.self_attn.q_proj" (block modules; `layer` is ignored for lm_head).
std::string qwen2_hf_module(int64_t layer, qwen2::Linear l);

// In transformers' state_dict order: embed_tokens, then per layer input_layernorm, q/k/v (weight,
// bias), o_proj, post_attention_layernorm, gate/up/down, then model.norm and (untied only) lm_head.
std::vector<WeightSpec> qwen2_weight_specs(const ModelConfig& c);

// The layer numbers N of the tensor names "<prefix>N.<rest>" ("model.layers." or "blk."); numbers
// of more than 9 digits are left out (such a name is not a layer of any sane model).
std::set<int64_t> layer_indices(const std::vector<std::string_view>& names,
                                std::string_view prefix);

// A header's layer count against the tensors actually present, before anything is sized by it:
// throws kFormat "<origin>: <key> is L but ..." naming the first layers without any tensor.
void check_layers_present(int64_t layers, const std::set<int64_t>& present,
                          const std::string& origin, std::string_view key, std::string_view prefix);

// Checks the stored tensors (name -> shape) against the specs. A tied model may also store
// lm_head.weight (some official checkpoints do). Throws kFormat "<origin>: ..." listing every
// missing, unexpected and wrong-shaped tensor with the expected shapes.
void check_qwen2_weights(const ModelConfig& c,
                         const std::map<std::string, std::vector<int64_t>>& stored,
                         const std::string& origin);

}  // namespace nnpipe
