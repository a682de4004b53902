// Qwen2 forward and backward for training, written out per layer (llm.c style) over backend ops.
// Activations of the last forward are kept for backward. Batches are right-padded: row b holds
// lengths[b] real tokens at positions 0..len-1; padded keys are masked out of attention and padded
// targets must be -100 (ignored by the loss), matching transformers with an attention_mask.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "arch/config.h"
#include "arch/qwen2_arch.h"
#include "backend/arena.h"
#include "backend/backend.h"
#include "core/json.h"
#include "core/rng.h"
#include "io/peft_adapter.h"

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
  // Keep f16/bf16 checkpoint weights in their stored dtype (owned copy, never converted to f32) for
  // a frozen base (LoRA). False: every weight converted to f32 (full fine-tuning master weights).
  // Only the matrices (linear layers, embedding, lm_head) stay half; the 1-D norm weights and
  // biases are converted to f32 (negligible memory, and their ops are f32-only).
  bool frozen_base = false;
};

class Qwen2Model {
 public:
  // Loads config.json and the weights (f32, f16 or bf16) of an HF directory onto `backend`; a
  // bitsandbytes 8/4-bit checkpoint (model/bnb_checkpoint.h) is dequantized to f32.
  // By default weights are converted to f32 (full fine-tuning master weights); see
  // Qwen2LoadOptions::frozen_base for LoRA.
  static Qwen2Model load(const fs::path& dir, Backend& backend, const Qwen2LoadOptions& opt = {});
  // Matrices may be f32, f16 or bf16; norm weights and biases must be f32.
  Qwen2Model(ModelConfig config, Qwen2Params params, Backend& backend);

  const ModelConfig& config() const { return config_; }
  const Qwen2Params& params() const { return params_; }
  Qwen2Params& params() { return params_; }
  bool tied() const { return !params_.by_name.contains("lm_head.weight"); }

  // Runs the model; returns the mean loss over non-ignored shifted labels (NaN without labels).
  double forward(const Qwen2Batch& batch);
  // Logits (B, T, V) of the last forward; with loss_rows_only, (1, M, V) for the M positions
  // that have a target.
  const Tensor& logits() const { return logits_; }
  // Training: compute the lm_head (the largest matmul, vocab-wide) only at positions whose
  // shifted label counts in the loss. Same loss and gradients; logits() then holds those rows.
  void set_loss_rows_only(bool on) { loss_rows_only_ = on; }
  // Gradients of the last forward's loss w.r.t. every parameter (zeroed first, then filled).
  void backward();
  const Qwen2Grads& grads() const { return grads_; }

  // Attaches a LoRA adapter (validated with PeftAdapter::validate against config(), origin used in
  // errors). Afterwards the base is frozen: backward() computes gradients only for the adapter
  // matrices and never allocates base-weight gradients. A/B are kept as f32 tensors keyed by PEFT
  // tensor name (lora_tensor_name(layer, module, 'A'/'B')), shapes A (r, in), B (out, r).
  void attach_lora(const PeftAdapter& adapter, const std::string& origin);
  bool has_lora() const { return lora_.has_value(); }
  // The current adapter (config as attached, A/B values copied out of the f32 tensors, dtype F32).
  PeftAdapter lora_adapter() const;
  // What an optimizer updates: every base parameter (no LoRA) or the adapter's A/B tensors (LoRA),
  // keyed by name, and their gradients after backward() (same keys, f32).
  std::map<std::string, Tensor>& trainable();
  const std::map<std::string, Tensor>& trainable_grads() const;
  // Training mode enables LoRA dropout (PEFT applies nn.Dropout(p) to the layer input before A:
  // y = W x + b + scaling * B(A(dropout(x)))); masks are drawn by Backend::dropout_mask from
  // *rng in a fixed order (layer, module q,k,v,o,gate,up,down, row-major), each advancing
  // rng->counter by its size, in forward and kept for backward. Eval mode (default) or p == 0:
  // no dropout and rng untouched.
  void set_training(bool training, CounterRng* rng);
  // The dropout counter values a training forward of `rows` (= B*T) rows draws: the trainer of
  // one data-parallel rank skips the other ranks' micro-batches by this much. 0 in eval mode,
  // without LoRA or without dropout.
  uint64_t dropout_draws(int64_t rows) const;
  // Called by backward() once the gradients of layer l's parameters are final (l from the last
  // layer down to 0), while the layers below still run: a data-parallel trainer starts reducing
  // them. The embeddings, final norm and lm_head are final only when backward() returns. Empty:
  // none.
  void set_grad_ready(std::function<void(int64_t layer)> fn) { grad_ready_ = std::move(fn); }
  // Numerics of the linear layers' and the lm_head's matmul and matmul_backward: kTorch
  // (default, transformers' fp32 step for step) or kTorchBf16 (bf16 weights of a frozen base
  // multiplied in bf16 with f32 accumulation, as a model loaded in bf16; f32 weights unchanged).
  void set_matmul_numerics(Numerics num) { matmul_num_ = num; }

 private:
  // The mean cross-entropy of logits (M, V) against targets (M): the loss stays on the device
  // (loss_) until this one download, once per forward.
  double loss_of(const Tensor& logits, const Tensor& targets);
  // The seven adaptable linear layers, in PEFT/PeftAdapter order (arch/qwen2_arch.h).
  static constexpr int kNumLinear = qwen2::kNumBlockLinears;
  struct LoraState {
    LoraConfig config;
    float scaling = 0;
    std::map<std::string, Tensor> ab, grads;  // PEFT tensor name -> A (r, in) / B (out, r), f32
    // [layer][module]: the A/B names, empty when the module is not adapted.
    std::vector<std::array<std::string, kNumLinear>> a_name, b_name;
  };
  struct LinearActs {
    Tensor xa;    // (N, r) (x*mask) A^T, adapted modules only
    Tensor keep;  // (N, in) u8 dropout keep mask (1 kept, 0 dropped); undefined without dropout
  };
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
    std::array<LinearActs, kNumLinear> lin;
  };
  void zero_grads();
  float keep_scale() const;  // 1/(1-p) of the LoRA dropout
  // out (N, O) = x W^T (+ bias) (+ the LoRA branch of (layer, module) if adapted).
  void linear(Tensor& out, const Tensor& x, int64_t layer, int module, const Tensor* bias,
              LinearActs& acts);
  // Backward of linear(): dx += ..., and the weight/bias gradients (base ones only when not
  // frozen, the A/B ones when adapted; a bias where arch/qwen2_arch.h gives the module one).
  void linear_backward(Tensor& dx, const Tensor& dout, const Tensor& x, int64_t layer, int module,
                       const LinearActs& acts);
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
  Tensor logits_;          // (B, T, V), or (1, M, V) with loss_rows_only_
  Tensor loss_;            // (2) f64 {mean, count} on the device
  // Every activation of a forward and every scratch gradient of a backward comes from these (one
  // block each in steady state): a training step allocates nothing per op. A forward's tensors
  // live until the next forward (backward reads them), a backward's until the next backward.
  std::shared_ptr<Arena> fwd_arena_, bwd_arena_;
  // A zero-filled (dtype, shape) tensor from the forward's or the backward's arena.
  Tensor fwd_zeros(DType dtype, std::vector<int64_t> shape);
  Tensor bwd_zeros(std::vector<int64_t> shape);
  // An i32 host vector as a tensor of the forward's arena.
  Tensor fwd_ints(const std::vector<int32_t>& v, std::vector<int64_t> shape);
  bool loss_rows_only_ = false;
  Tensor loss_rows_;    // (M) i32: the positions with a target, when loss_rows_only_
  Tensor lnf_sel_;      // (M, C) their final-norm outputs
  Tensor targets_sel_;  // (M) their targets
  std::optional<LoraState> lora_;
  bool training_ = false;
  CounterRng* rng_ = nullptr;
  std::function<void(int64_t)> grad_ready_;
  Numerics matmul_num_ = Numerics::kTorch;
};

}  // namespace nnpipe
