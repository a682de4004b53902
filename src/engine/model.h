// The inference model: a Qwen2 GGUF file (any type export-gguf writes) or a Hugging Face directory
// (f32/f16/bf16 safetensors), its weights used in place from the file mapping as Tensors that
// borrow the mapped bytes (the GGML block types are DTypes), never copied whole. Immutable once
// loaded: one Model is shared read-only by every session on every thread (std::shared_ptr<const
// Model>).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arch/config.h"
#include "arch/qwen2_arch.h"
#include "backend/backend.h"
#include "core/file.h"
#include "io/gguf.h"
#include "io/hf_model_dir.h"
#include "tokenizer/chat_assets.h"

namespace nnpipe::engine {

// The seven adapted linear layers of a block, in PEFT/llama.cpp order (the architecture table's
// kQ..kDown; its kLmHead is the model's output()).
using Linear = qwen2::Linear;
inline constexpr int kNumLinear = qwen2::kNumBlockLinears;
// "attn_q", ..., "ffn_down" (GGUF) and "q_proj", ..., "down_proj" (HF/PEFT).
inline const char* linear_gguf_name(Linear l) {
  return qwen2::linear(l).gguf;
}
inline const char* linear_hf_name(Linear l) {
  return qwen2::linear(l).hf;
}

struct LayerWeights {
  Tensor lin[kNumLinear];         // (out, in) each, any matmul type, borrowed
  Tensor q_bias, k_bias, v_bias;  // (out) f32 copies (small)
  Tensor attn_norm, ffn_norm;     // (C) f32
};

class Model {
 public:
  // A GGUF file or an HF model directory. Errors name the file and what is wrong (corrupt or
  // truncated file, architecture, missing tensor, shape, unsupported type).
  // Weights stay on the CPU mapping; `backend` runs the model (Context) and converts the small
  // vectors.
  static std::shared_ptr<const Model> load(const fs::path& path, Backend& backend = cpu_backend());
  Backend& backend() const { return *backend_; }

  const ModelConfig& config() const { return config_; }
  const ChatAssets& assets() const { return *assets_; }
  const std::string& origin() const { return origin_; }
  const std::string& architecture() const { return arch_; }
  bool is_gguf() const { return gguf_.has_value(); }
  // End-of-generation ids: the config's eos ids plus <|im_end|> and <|endoftext|> when the
  // vocabulary has them (llama.cpp's EOG set for these models).
  const std::vector<int32_t>& eog_ids() const { return eog_; }
  bool is_eog(int32_t id) const;
  int64_t vocab_size() const { return config_.vocab_size; }
  // A short type description ("Q4_K_M-ish mix: Q4_K 96, Q6_K 25, F32 ..."): the types in use.
  std::string weight_types() const;
  uint64_t weight_bytes() const { return weight_bytes_; }

  const Tensor& token_embd() const { return token_embd_; }    // (V, C)
  const Tensor& output() const { return output_; }            // (V, C); token_embd when tied
  const Tensor& output_norm() const { return output_norm_; }  // (C) f32
  const std::vector<LayerWeights>& layers() const { return layers_; }

  // The base matrix an adapter tensor targets, by GGUF base name ("blk.3.attn_q.weight",
  // "output.weight"); nullptr when the model has no such matrix (an output.weight adapter on a
  // tied model).
  const Tensor* matrix(std::string_view gguf_name) const;

  // A copy whose adapted matrices are f32 W + sum_i s_i B_i A_i (for --merge); other matrices are
  // shared with this model (which the copy keeps alive).
  struct MergeTerm {
    int64_t layer;
    Linear lin;
    const Tensor* a;  // (r, in)
    const Tensor* b;  // (out, r)
    float scale;
  };
  std::shared_ptr<const Model> merged(const std::vector<MergeTerm>& terms) const;

 private:
  Model() = default;
  void load_gguf(const fs::path& path);
  void load_hf(const fs::path& dir);
  void finish();

  std::string origin_;
  std::string arch_ = "qwen2";
  ModelConfig config_;
  std::shared_ptr<const ChatAssets> assets_;
  std::vector<int32_t> eog_;
  uint64_t weight_bytes_ = 0;
  // Owners of the bytes the matrices borrow.
  std::shared_ptr<const GgufFile> gguf_holder_;
  std::shared_ptr<const HfModelDir> hf_holder_;
  std::optional<bool> gguf_;  // engaged for GGUF models
  Backend* backend_ = nullptr;

  Tensor token_embd_, output_;
  Tensor output_norm_;
  std::vector<LayerWeights> layers_;
};

}  // namespace nnpipe::engine
