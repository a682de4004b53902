// LoRA adapters at run time: GGUF LoRA files (convert_lora_to_gguf.py / export-lora-gguf) and PEFT
// directories, checked against a model and applied as y = W x + sum_i s_i B_i (A_i x) without ever
// touching the base weights. Adapters are immutable and shared (std::shared_ptr<const>), so they
// can be added to and removed from sessions while other sessions run.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model.h"

namespace nnpipe::engine {

// One adapted matrix: A (r, in), B (out, r), and the factor that turns the user scale into the
// one applied (llama.cpp: alpha / rank, or 1 without alpha; PEFT: alpha / r or alpha / sqrt(r)).
struct LoraPair {
  Tensor a, b;  // (r, in), (out, r): any matmul type, borrowed from the file or the PEFT tensors
  float factor = 1.0f;
  // B^T (r, out) in f32 when B is F32/F16/BF16 (every adapter convert_lora_to_gguf writes with
  // r < 32): the B product as r axpys over `out` (or one sgemm) instead of `out` dots of length
  // r, which no SIMD kernel runs well (Backend::lora_apply). Undefined: B goes through matmul.
  Tensor bt;
};

class LoraAdapter {
 public:
  // A GGUF LoRA file or a PEFT adapter directory. Throws (kFormat/kUnsupported/kNotFound) with a
  // message "<path>: <why>" when it is not a LoRA, is for another architecture or model, names a
  // base tensor the model lacks, or has shapes that do not fit.
  static std::shared_ptr<const LoraAdapter> load(const fs::path& path, const Model& model);

  const std::string& origin() const { return origin_; }
  std::string name() const;  // file or directory name
  int64_t rank() const { return rank_; }
  double alpha() const { return alpha_; }  // 0: none (GGUF without adapter.lora.alpha)
  size_t num_pairs() const { return num_pairs_; }
  // The pair for a block's linear layer, or nullptr.
  const LoraPair* find(int64_t layer, Linear l) const {
    return layers_[static_cast<size_t>(layer)][static_cast<int>(l)].get();
  }
  const LoraPair* output() const { return output_.get(); }  // lm_head (untied models)

 private:
  LoraAdapter() = default;
  void load_gguf(const fs::path& path, const Model& model);
  void load_peft(const fs::path& dir, const Model& model);

  std::string origin_;
  int64_t rank_ = 0;
  double alpha_ = 0;
  size_t num_pairs_ = 0;
  std::vector<std::array<std::unique_ptr<LoraPair>, kNumLinear>> layers_;
  std::unique_ptr<LoraPair> output_;
  std::shared_ptr<const void> holder_;  // the GGUF mapping or the PEFT tensors
};

struct AdapterRef {
  std::shared_ptr<const LoraAdapter> adapter;
  float scale = 1.0f;  // the user scale; 0 disables the adapter
};
// Applied in order (the sum is the same in any order up to rounding).
using AdapterSet = std::vector<AdapterRef>;

// True when both sets apply the same adapters with the same scales in the same order (KV state
// computed under one is valid for the other). Scale-0 entries are ignored.
bool same_adapters(const AdapterSet& a, const AdapterSet& b);

// Ranges of the numbers that scale an adapter. Wider values are no adapter anyone trained: they
// only overflow the f32 products (inf/NaN logits, every draw token 0).
inline constexpr double kMaxLoraScale = 1e4;  // |user scale| (--lora FILE:SCALE, WASI-NN "scale")
inline constexpr double kMaxLoraAlpha =
    1e6;  // |alpha| (GGUF adapter.lora.alpha; = kMaxPeftLoraAlpha)

// Throws kInvalidArgument "<what>: scale <s> ..." unless `scale` is finite and within
// kMaxLoraScale.
void check_lora_scale(double scale, std::string_view what);

// "FILE[:SCALE]" (the --lora syntax): the last ':' starts a scale when what follows parses as a
// number (nan and inf included); a scale that fails check_lora_scale throws kInvalidArgument.
std::pair<std::string, float> parse_lora_arg(const std::string& arg);

// The merge terms of a set (for Model::merged).
std::vector<Model::MergeTerm> merge_terms(const AdapterSet& set, const Model& model);

}  // namespace nnpipe::engine
