// One sequence's evaluation state: the KV cache (f16, like llama.cpp's default) and the scratch
// buffers of the forward. forward() runs n new tokens at positions [n_past, n_past + n) through
// the model with the context's adapter set: batched prompt processing (n > 1) and single-token
// decode (n == 1) are the same code. Not thread-safe: one context per session/thread; the Model
// and adapters it reads are shared.
//
// Numerics follow llama.cpp's CPU graph with flash attention off (llama-cpp-python's default):
// RMSNorm sums squares in double, RoPE angles p * theta_scale^i by repeated f32 multiplication,
// K/V stored as f16, q rounded to f16 for Q K^T, softmax in f32, probabilities rounded to f16
// for P V, LoRA terms added after W x and before the bias. Prompts (n > 1) take the tiled
// attention kernels of prefill_attention.h (the same roundings, another f32 summation order).
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
  size_t kv_bytes() const;
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
  void linear(float* y, const float* x, int64_t n, int64_t layer, Linear l, const float* bias);
  void attention(float* out, const float* q, int64_t layer, int64_t n);
  // Makes room for `rows` positions in every layer's K/V: doubling (from kKvMinRows), capped at
  // n_ctx, keeping the cached rows.
  void reserve_kv(int64_t rows);

  std::shared_ptr<const Model> model_;
  AdapterSet adapters_;
  int64_t n_ctx_ = 0, n_past_ = 0;
  int64_t kv_rows_ = 0;                       // positions k_/v_ hold room for (<= n_ctx_)
  std::vector<std::vector<uint16_t>> k_, v_;  // per layer (kv_rows_, kv_dim) f16
  // scratch
  std::vector<float> x_, h_, q_, k_new_, v_new_, att_, o_, gate_, up_, lora_t_, lora_u_, logits_;
  std::vector<float> kt_, vf_;
  std::vector<float> lora_t16_;  // A x converted as ggml converts it for B's type  // prefill
                                 // attention: the cache as f32, K transposed per head
};

}  // namespace nnpipe::engine
