// One sequence's evaluation state: the KV cache (backend/kv_cache.h, f16 like llama.cpp's
// default) and the scratch tensors of the forward. forward() runs n new tokens at positions
// [n_past, n_past + n) through the model with the context's adapter set, as a sequence of the
// model's Backend ops (the engine has no kernels of its own): batched prompt processing (n > 1)
// and single-token decode (n == 1) are the same code. Not thread-safe: one context per
// session/thread; the Model and adapters it reads are shared.
//
// Numerics are Numerics::kGgml (llama.cpp's CPU graph with flash attention off,
// llama-cpp-python's default): see backend.h; LoRA terms are added after W x and before the bias.
#pragma once
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/lora.h"
#include "engine/model.h"

namespace nnpipe::engine {

// The context size a command runs with (the policy `infer -c`, `chat -c` and `eval --ctx` share):
// 0 is min(4096, the model's context length); a negative value throws kInvalidArgument naming
// `flag`; a value above the model's context length is capped to it with a warning (positions past
// it were never trained, and the KV cache would grow without a useful bound).
int64_t context_size_for(const ModelConfig& c, int64_t requested, std::string_view flag);

class Context {
 public:
  // n_ctx bounds the positions; the KV cache is allocated as it fills (reserve_kv), so a large
  // n_ctx costs nothing until the tokens are there.
  Context(std::shared_ptr<const Model> model, int64_t n_ctx);

  const Model& model() const { return *model_; }
  const std::shared_ptr<const Model>& model_ptr() const { return model_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_past() const { return n_past_; }
  // Bytes of K/V cache allocated now (grows with use, never beyond n_ctx positions).
  size_t kv_bytes() const { return kv_.bytes(); }
  // Forgets cached positions >= n (0: everything).
  void truncate(int64_t n);

  const AdapterSet& adapters() const { return adapters_; }
  // Drops the cache unless the new set is the same as the current one.
  void set_adapters(AdapterSet set);

  // Evaluates tokens[0..n) at positions n_past..; returns logits (V) of the last token, or of all
  // n tokens (n, V) when all_logits. Throws kInvalidArgument when the cache would overflow or a
  // token id is out of range; the cache is unchanged then.
  const float* forward(const int32_t* tokens, int64_t n, bool all_logits = false);

 private:
  // y (n, out) = x (n, in) W^T + the adapters' terms + bias, for a block's linear layer (layer
  // >= 0) or lm_head (layer < 0).
  void linear(Tensor& y, const Tensor& x, int64_t layer, Linear l, const Tensor* bias);
  // Scratch tensors sized for n tokens (their storage grows, never shrinks).
  void scratch(int64_t n, int64_t logit_rows);

  std::shared_ptr<const Model> model_;
  Backend& be_;
  AdapterSet adapters_;
  int64_t n_ctx_ = 0, n_past_ = 0;
  KvCache kv_;
  // Scratch: each buffer's storage (cap, grown to the largest call) and this call's view of it.
  struct Buf {
    Tensor cap, view;
  };
  Buf x_, h_, q_, k_, v_, att_, o_, gate_, up_, lora_, logits_, pos_;
};

}  // namespace nnpipe::engine
