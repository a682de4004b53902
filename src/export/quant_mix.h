// Which ggml type each tensor of a GGUF export gets: llama.cpp's quantization mixes (the per-tensor
// rules of llama-quantize, src/llama-quant.cpp), for the file types nnpipe exports.
//
// A llama.cpp "file type" (LLAMA_FTYPE_*, written as general.file_type) names a default tensor
// type plus rules that give some tensors more bits: output.weight (and token_embd.weight when the
// embeddings are tied) gets Q6_K, and the _M mixes give attn_v and ffn_down Q6_K in the layers
// where quantization error hurts most. A tensor whose row length is not a multiple of its type's
// block falls back to a smaller block type, then to F16. Reproducing those rules lets
// `nnpipe export-gguf --type q4_k_m` write what `llama-quantize f32.gguf out.gguf Q4_K_M` writes,
// tensor for tensor and byte for byte (tests/conformance/test_export_kquant.py).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"

namespace nnpipe {

// llama.cpp's llama_ftype values (include/llama.h; gguf-py LlamaFileType) for the types nnpipe
// exports.
enum class LlamaFtype : uint32_t {
  kAllF32 = 0,
  kMostlyF16 = 1,
  kMostlyQ4_0 = 2,
  kMostlyQ4_1 = 3,
  kMostlyQ8_0 = 7,
  kMostlyQ5_0 = 8,
  kMostlyQ5_1 = 9,
  kMostlyQ4_K_S = 14,
  kMostlyQ4_K_M = 15,
  kMostlyQ5_K_S = 16,
  kMostlyQ5_K_M = 17,
  kMostlyQ6_K = 18,
  kMostlyBF16 = 32,
};

// llama_ftype_get_default_type: the type of every quantizable tensor no rule singles out.
GgmlType llama_ftype_default_type(LlamaFtype ftype);
// llama.cpp's name of the file type, e.g. "Q4_K_M" (llama-quantize's argument).
std::string_view llama_ftype_name(LlamaFtype ftype);

// A requested mix: the file type, and whether to skip the per-tensor rules (llama-quantize
// --pure: every quantizable tensor gets the default type, only the row-length fallback applies).
struct QuantMix {
  LlamaFtype ftype = LlamaFtype::kMostlyF16;
  bool pure = false;
};

// What the rules need to know about the whole model (llama-quant.cpp's quantize_state_impl).
struct QuantMixModel {
  int n_layer = 0;              // block count (hparams.n_layer_all, the ffn_down rules' n)
  int n_attention_wv = 0;       // number of attn_v / attn_qkv / attn_kv_b tensors
  bool tied_embeddings = true;  // no output.weight: token_embd gets output.weight's type
  // llama.cpp classifies the model as "70B" (for Qwen2: 80 blocks), whose attn_v gets Q5_K
  // instead of Q3_K/Q4_K because 8 heads share it.
  bool type_70b = false;

  // Counts from the names of all the tensors the file will hold (type_70b stays false).
  static QuantMixModel from_tensor_names(std::span<const std::string> names, int n_layer);
};

// Whether llama-quantize quantizes a tensor at all (tensor_allows_quantization): only 2-D and
// larger weights ending in "weight", never norms; everything else keeps its source type (F32).
bool quant_mix_quantizes(std::string_view name, std::span<const int64_t> ne);

// The ggml type of tensor `name` (GGUF name, e.g. "blk.3.attn_v.weight") with dimensions `ne`
// (GGML order: ne[0] is the row length) in an export of `mix`, for a tensor stored as F32 before
// quantization. Equals llama-quantize's choice for an F32 GGUF of the same model, without an
// importance matrix or type overrides.
GgmlType quant_mix_tensor_type(const QuantMix& mix, const QuantMixModel& model,
                               std::string_view name, std::span<const int64_t> ne);

}  // namespace nnpipe
