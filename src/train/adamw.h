// AdamW exactly as torch.optim.AdamW (single-tensor path, foreach=False), global-norm gradient
// clipping as torch.nn.utils.clip_grad_norm_, and optimizer state checkpoints (.safetensors).
// The arithmetic runs in Backend ops (adamw_step, sq_norm, scale); this side keeps the state and
// the bookkeeping (per-parameter step counts, weight decay, save/load).
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "core/file.h"

namespace nnpipe {

// AdamWHyper (the hyperparameters) is in backend/optim.h, beside the step it parameterises.

struct AdamWState {
  Tensor exp_avg;     // (numel) f32 on the backend, flat whatever the parameter's shape
  Tensor exp_avg_sq;  // (numel)
  int64_t step = 0;
};

// One AdamW step of one parameter (Backend::adamw_step: torch's operation order): step += 1,
// then the update. `state` is sized on first use. Throws kInvalidArgument on size mismatches.
void adamw_step(Backend& be, Tensor& param, const Tensor& grad, AdamWState& state,
                const AdamWHyper& h);

// Named parameters' states; the learning rate is changed per step by the schedule (set_lr).
class AdamW {
 public:
  explicit AdamW(Backend& be, AdamWHyper h = {}) : be_(&be), h_(h) {}
  const AdamWHyper& hyper() const { return h_; }
  void set_lr(double lr) { h_.lr = lr; }
  void step(const std::string& name, Tensor& param, const Tensor& grad);
  // The same with this parameter's own weight decay (the HF Trainer exempts biases and norms).
  void step(const std::string& name, Tensor& param, const Tensor& grad, double weight_decay);
  const std::map<std::string, AdamWState>& states() const { return states_; }
  const AdamWState* state(std::string_view name) const;
  // Replaces one parameter's state (a data-parallel rank receiving rank 0's, ZeRO-1's gather).
  void set_state(const std::string& name, AdamWState st) { states_[name] = std::move(st); }

  // Tensors "exp_avg.<name>" and "exp_avg_sq.<name>" (F32, 1-D) and metadata {"format": "pt",
  // "step": the largest step, "steps": JSON {name: step}}. Written atomically.
  void save(const fs::path& path) const;
  // Replaces all states. Errors (kFormat) name the file and the tensor.
  void load(const fs::path& path);

 private:
  Backend* be_;
  AdamWHyper h_;
  std::map<std::string, AdamWState> states_;
};

// torch.nn.utils.clip_grad_norm_(norm_type=2): total = ||(||g_i||)_i||, coef = max_norm /
// (total + 1e-6) clamped to 1, every grad scaled by coef (always, like torch). Returns the
// pre-clip total norm (float32, like torch's tensor). The tensors are handles: the scaling
// reaches their storage.
float clip_grad_norm(Backend& be, std::span<Tensor> grads, double max_norm);
// The total norm only.
float grad_total_norm(Backend& be, std::span<const Tensor> grads);

}  // namespace nnpipe
