// Qwen2 forward and backward for training, written out per layer (llm.c style) over backend ops.
// Activations of the last forward are kept for backward. Batches are right-padded: row b holds
// lengths[b] real tokens at positions 0..len-1; padded keys are masked out of attention and padded
// targets must be -100 (ignored by the loss), matching transformers with an attention_mask.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/json.h"
#include "core/rng.h"
#include "io/peft_adapter.h"
#include "model/config.h"

namespace nnpipe {

struct Qwen2Batch {
  int64_t batch = 0, seq = 0;      // B, T
  std::vector<int32_t> input_ids;  // (B, T)
  std::vector<int32_t> lengths;    // (B), each in [1, T]; empty: all T
  // (B, T), unshifted like transformers' `labels` (position t's label is the token at t; the
  // model predicts labels[t + 1] from position t). -100 = ignored. Empty: no loss.
  std::vector<int32_t> labels;
};

// Parameters and gradients keyed by Hugging Face tensor name (qwen2_weight_specs order). A tied
// model has no "lm_head.weight": the embedding serves both uses and its gradient sums both.
struct Qwen2Params {
  std::map<std::string, Tensor> by_name;
  Tensor& at(const std::string& name);
  const Tensor& at(const std::string& name) const;
};
using Qwen2Grads = Qwen2Params;

struct Qwen2LoadOptions {
  bool frozen_base = false;
};

class Qwen2Model {
 public:
  // Loads config.json and the weights (f32, f16 or bf16) of an HF directory onto `backend`.
  // Weights are converted to f32 for compute: right for full fine-tuning (f32 master weights);
  // LoRA will later keep the frozen base in its stored bf16/f16 instead of converting it.
  static Qwen2Model load(const fs::path& dir, Backend& backend, const Qwen2LoadOptions& opt = {});
  Qwen2Model(ModelConfig config, Qwen2Params params, Backend& backend);

  const ModelConfig& config() const { return config_; }
  const Qwen2Params& params() const { return params_; }
  Qwen2Params& params() { return params_; }
  bool tied() const { return !params_.by_name.contains("lm_head.weight"); }

  // Runs the model; returns the mean loss over non-ignored shifted labels (NaN without labels).
  double forward(const Qwen2Batch& batch);
  // Logits (B, T, V) of the last forward.
  const Tensor& logits() const { return logits_; }
  // Gradients of the last forward's loss w.r.t. every parameter (zeroed first, then filled).
  void backward();
  const Qwen2Grads& grads() const { return grads_; }

  // TEMPORARY (lead's stub until the LoRA branch lands).
  void attach_lora(const LoraAdapter& adapter, const std::string& origin);
  bool has_lora() const;
  LoraAdapter lora_adapter() const;
  std::map<std::string, Tensor>& trainable();
  const std::map<std::string, Tensor>& trainable_grads() const;
  void set_training(bool training, Rng* rng);

 private:
  struct LayerActs {
    Tensor x;              // (N, C) layer input (residual stream)
    Tensor ln1, ln1_rstd;  // (N, C), (N)
    Tensor q, k, v;        // (B, T, H, D), (B, T, KV, D) x2, before RoPE
    Tensor qr, kr;         // after RoPE
    Tensor att;            // (B, H, T, T) softmax probabilities
    Tensor atty;           // (B, T, H, D) attention output
    Tensor h;              // (N, C) x + o_proj(atty)
    Tensor ln2, ln2_rstd;  // (N, C), (N)
    Tensor gate, up, act;  // (N, F)
  };
  void zero_grads();
  const Tensor& lm_head() const;
  Tensor& lm_head_grad();

  ModelConfig config_;
  Qwen2Params params_;
  Qwen2Grads grads_;
  Backend* be_;
  // Activations of the last forward.
  int64_t b_ = 0, t_ = 0;
  bool have_labels_ = false;
  Tensor ids_, positions_, lengths_, targets_;  // (B, T), (B, T), (B), (N) i32
  std::vector<LayerActs> layers_;
  Tensor out_;             // (N, C) last layer output
  Tensor lnf_, lnf_rstd_;  // (N, C), (N)
  Tensor logits_;          // (B, T, V)
};

}  // namespace nnpipe
