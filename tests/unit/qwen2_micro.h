// A micro Qwen2 (vocab 16, hidden 8, 2 layers, GQA 2/1) with random weights and a right-padded
// batch, shared by the model unit tests.
#pragma once
#include <random>
#include <utility>

#include "arch/qwen2_weights.h"
#include "finite_diff.h"
#include "model/qwen2.h"

namespace nnpipe::test_models {

inline ModelConfig micro_config(bool tied = true) {
  ModelConfig c;
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  return c;
}

// Norm weights 1 + 0.1 N(0, 1), everything else 0.3 N(0, 1), from a fixed seed.
inline Qwen2Model micro_model(const ModelConfig& c) {
  std::mt19937 rng(42);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Qwen2Params p;
  for (const WeightSpec& s : qwen2_weight_specs(c)) {
    Tensor t = Tensor::zeros(DType::kF32, s.shape);
    for (int64_t i = 0; i < t.numel(); ++i)
      t.set(i, s.kind == WeightKind::kNorm ? 1.0f + 0.1f * d(rng) : 0.3f * d(rng));
    p.by_name[s.name] = t;
  }
  return Qwen2Model(c, std::move(p), cpu_backend());
}

inline Qwen2Model micro_model(bool tied = true) {
  return micro_model(micro_config(tied));
}

// Two rows of lengths 5 and 3; the first label and the padding are ignored.
inline Qwen2Batch micro_batch() {
  Qwen2Batch b;
  b.batch = 2;
  b.seq = 5;
  b.input_ids = {3, 7, 1, 15, 2, 4, 4, 9, 0, 0};
  b.lengths = {5, 3};
  b.labels = {-100, 7, 1, 15, 2, 4, 4, 9, -100, -100};
  return b;
}

}  // namespace nnpipe::test_models
