// Evaluation state: per sequence the KV cache (backend/kv_cache.h, f16 like llama.cpp's default)
// and the adapter set; per evaluator the scratch tensors of the forward. A forward runs the new
// tokens of one or several sequences through the model as a sequence of the model's Backend ops
// (the engine has no kernels of its own): prompt processing, single-token decode and a batch of
// many sequences' decodes are the same code.
//
// Numerics are Numerics::kGgml (llama.cpp's CPU graph with flash attention off,
// llama-cpp-python's default): see backend.h; LoRA terms are added after W x and before the bias.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "backend/arena.h"
#include "engine/lora.h"
#include "engine/model.h"

namespace nnpipe::engine {

// The context size a command runs with (the policy `infer -c`, `chat -c` and `eval --ctx` share):
// 0 is min(4096, the model's context length); a negative value throws kInvalidArgument naming
// `flag`; a value above the model's context length is capped to it with a warning (positions past
// it were never trained, and the KV cache would grow without a useful bound).
int64_t context_size_for(const ModelConfig& c, int64_t requested, std::string_view flag);

// One sequence's state in a batched forward: its KV cache, how many positions it holds and the
// adapter set they were computed under.
class Sequence {
 public:
  Sequence(const Model& model, int64_t n_ctx);

  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_past() const { return n_past_; }
  size_t kv_bytes() const { return kv_.bytes(); }
  // Forgets cached positions >= n (0: everything).
  void truncate(int64_t n);
  const AdapterSet& adapters() const { return adapters_; }
  // Drops the cache unless the new set is the same as the current one.
  void set_adapters(AdapterSet set);

 private:
  friend class Evaluator;
  AdapterSet adapters_;
  int64_t n_ctx_ = 0, n_past_ = 0;
  KvCache kv_;
};

// New tokens of one sequence in a step.
struct SeqTokens {
  Sequence* seq = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
};

// Runs batched forwards: the new tokens of several sequences stacked into one set of rows, one
// pass over the base weights for all of them, each sequence's adapters applied to its own rows
// only (consecutive sequences with the same set share one LoRA product: order the steps by
// adapter set), each attending over its own cache. The scratch tensors are kept between calls.
// Not thread-safe; the Model and adapters it reads are shared.
class Evaluator {
 public:
  // num: Numerics::kGgml (llama.cpp's graph), or kGgmlInvariant where a row's logits must not
  // depend on the other rows of the step (continuous batching).
  explicit Evaluator(std::shared_ptr<const Model> model, Numerics num = Numerics::kGgml);
  const Model& model() const { return *model_; }

  // Evaluates every step's tokens at its sequence's next positions. Returns logits (S, V): row s
  // for the last token of step s; with all_logits (one step only) (n, V) for each of its tokens.
  // Throws kInvalidArgument when a cache would overflow, a token id is out of range or a
  // sequence appears twice; no sequence changes then.
  const float* forward(std::span<const SeqTokens> steps, bool all_logits = false);

 private:
  struct Segment {  // rows [row0, row0 + n) that share one adapter set
    const AdapterSet* adapters;
    int64_t row0, n;
  };
  // y (N, out) = x (N, in) W^T + each segment's adapter terms + bias, for a block's linear layer
  // (layer >= 0) or lm_head (layer < 0).
  void linear(Tensor& y, const Tensor& x, int64_t layer, Linear l, const Tensor* bias,
              const std::vector<Segment>& segs);
  // This forward's scratch tensors for N rows, from the arena.
  void scratch(int64_t n, int64_t logit_rows, int64_t max_rank);

  std::shared_ptr<const Model> model_;
  Backend& be_;
  Numerics num_;
  Arena arena_;  // every scratch tensor of a forward: no allocation per op
  Tensor x_, h_, q_, k_, v_, att_, o_, gate_, up_, lora_, logits_, pos_, last_, hl_, ids_;
  std::vector<LoraRows> items_;  // linear()'s adapter products, reused between calls
  std::vector<int32_t> host_ids_, host_pos_, host_last_;  // uploaded into ids_, pos_, last_
  std::vector<float> host_logits_;                        // downloaded from logits_
};

// One sequence with its own evaluator: what a session, the CLI and the WASI-NN backend use.
class Context {
 public:
  // n_ctx bounds the positions; the KV cache is allocated as it fills (KvCache::reserve), so a
  // large n_ctx costs nothing until the tokens are there.
  Context(std::shared_ptr<const Model> model, int64_t n_ctx);

  const Model& model() const { return *model_; }
  const std::shared_ptr<const Model>& model_ptr() const { return model_; }
  int64_t n_ctx() const { return seq_.n_ctx(); }
  int64_t n_past() const { return seq_.n_past(); }
  // Bytes of K/V cache allocated now (grows with use, never beyond n_ctx positions).
  size_t kv_bytes() const { return seq_.kv_bytes(); }
  void truncate(int64_t n) { seq_.truncate(n); }
  const AdapterSet& adapters() const { return seq_.adapters(); }
  void set_adapters(AdapterSet set) { seq_.set_adapters(std::move(set)); }

  // Evaluates tokens[0..n) at positions n_past..; returns logits (V) of the last token, or of all
  // n tokens (n, V) when all_logits. Throws kInvalidArgument when the cache would overflow or a
  // token id is out of range; the cache is unchanged then.
  const float* forward(const int32_t* tokens, int64_t n, bool all_logits = false);

 private:
  std::shared_ptr<const Model> model_;
  Sequence seq_;
  Evaluator ev_;
};

}  // namespace nnpipe::engine
