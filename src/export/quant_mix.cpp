// llama.cpp's per-tensor type rules (src/llama-quant.cpp: tensor_allows_quantization,
// llama_tensor_get_type_impl, tensor_type_fallback), restricted to what applies to the file types
// of LlamaFtype with no importance matrix, no --tensor-type / --output-tensor-type overrides and
// a dense (non-MoE, non-Falcon) model. The rules are our own code; each branch says which of
// llama.cpp's it is.
#include "export/quant_mix.h"

#include <charconv>

#include "core/error.h"

namespace nnpipe {
namespace {

// llama-quant.cpp's tensor_category, by the same substring tests in the same order.
enum class Category {
  kTokenEmbd,
  kAttnV,
  kAttnK,
  kAttnQ,
  kAttnOutput,
  kFfnUp,
  kFfnGate,
  kFfnDown,
  kOutput,
  kOther
};

bool has(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

Category category(std::string_view name) {
  if (name == "output.weight") return Category::kOutput;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight")
    return Category::kTokenEmbd;
  // attn_qkv and attn_kv_b are tested first and are attn_v-like: they take attn_v's branch (the
  // separate attn_qkv branch after it in llama_tensor_get_type_impl is unreachable).
  if (has(name, "attn_qkv.weight") || has(name, "attn_kv_b.weight") || has(name, "attn_v.weight"))
    return Category::kAttnV;
  if (has(name, "attn_k.weight")) return Category::kAttnK;
  if (has(name, "attn_q.weight")) return Category::kAttnQ;
  if (has(name, "attn_output.weight")) return Category::kAttnOutput;
  if (has(name, "ffn_up")) return Category::kFfnUp;
  if (has(name, "ffn_gate")) return Category::kFfnGate;
  if (has(name, "ffn_down")) return Category::kFfnDown;
  return Category::kOther;
}

// The block index of "blk.N.<...>". llama.cpp counts attn_v-like and ffn_down tensors as it meets
// them, in its loader's order (block number, then name); with one such tensor per block, which
// every dense model has, the count when it meets block N's is N.
int layer_of(std::string_view name) {
  int i = -1;
  if (name.starts_with("blk.")) {
    const char* b = name.data() + 4;
    const char* e = name.data() + name.size();
    auto [p, ec] = std::from_chars(b, e, i);
    if (ec != std::errc() || p == e || *p != '.') i = -1;
  }
  if (i < 0) fail(ErrorCode::kInternal, "quantization mix: no block number in tensor {}", name);
  return i;
}

// More bits for the first and last eighth of the layers and every third one between
// (llama-quant.cpp's use_more_bits).
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

bool is_quantized(GgmlType t) {
  return t != GgmlType::kF32 && t != GgmlType::kF16 && t != GgmlType::kBF16;
}

int64_t block_of(GgmlType t) {
  return ggml_traits(t).block_size;
}

// llama_tensor_get_type_impl for LlamaFtype's quantized file types.
GgmlType mixed_type(LlamaFtype ftype, const QuantMixModel& m, std::string_view name,
                    std::span<const int64_t> ne, GgmlType type) {
  using F = LlamaFtype;
  const Category cat = category(name);
  if (cat == Category::kOutput || (m.tied_embeddings && cat == Category::kTokenEmbd)) {
    // The output projection (or the tied embedding that serves as it) gets Q6_K, except in Q8_0
    // files; a row length that the default type's block does not divide gives Q8_0 instead.
    if (ne[0] % block_of(type) != 0) return GgmlType::kQ8_0;
    return type == GgmlType::kQ8_0 ? type : GgmlType::kQ6_K;
  }
  if (cat == Category::kTokenEmbd) return type;  // untied: the default (IQ/TQ rules aside)
  if (cat == Category::kAttnV) {
    // llama.cpp's i_attention_wv runs over the attn_v-like tensors in loader order. Its GQA
    // (n_gqa >= 4) and 8-expert attn_v rules only concern Q2_K/Q3_K/IQ files and MoE models.
    const int i = layer_of(name);
    if ((ftype == F::kMostlyQ4_K_M || ftype == F::kMostlyQ5_K_M) &&
        use_more_bits(i, m.n_attention_wv))
      type = GgmlType::kQ6_K;
    else if (ftype == F::kMostlyQ4_K_S && i < 4)
      type = GgmlType::kQ5_K;
    if (m.type_70b && (type == GgmlType::kQ3_K || type == GgmlType::kQ4_K)) type = GgmlType::kQ5_K;
    return type;
  }
  if (cat == Category::kFfnDown) {
    const int i = layer_of(name), n = m.n_layer;
    if (ftype == F::kMostlyQ4_K_M || ftype == F::kMostlyQ5_K_M) {
      if (use_more_bits(i, n)) type = GgmlType::kQ6_K;
    } else if (ftype == F::kMostlyQ4_K_S && i < n / 8) {
      type = GgmlType::kQ5_K;
    }
    return type;
  }
  // attn_k, attn_q, attn_output, ffn_up, ffn_gate: only Q2_K/Q3_K/IQ files and MoE models change
  // them.
  return type;
}

// tensor_type_fallback: a row length the type's block does not divide takes the 32-block type
// of about the same size, and F16 if even 32 does not divide it.
GgmlType fallback(GgmlType type, int64_t ncols) {
  if (ncols % block_of(type) == 0) return type;
  switch (type) {
    case GgmlType::kQ4_K:
      type = GgmlType::kQ5_0;
      break;
    case GgmlType::kQ5_K:
      type = GgmlType::kQ5_1;
      break;
    case GgmlType::kQ6_K:
      type = GgmlType::kQ8_0;
      break;
    default:
      break;  // already a 32-block type
  }
  return ncols % block_of(type) == 0 ? type : GgmlType::kF16;
}

}  // namespace

GgmlType llama_ftype_default_type(LlamaFtype ftype) {
  switch (ftype) {
    case LlamaFtype::kAllF32:
      return GgmlType::kF32;
    case LlamaFtype::kMostlyF16:
      return GgmlType::kF16;
    case LlamaFtype::kMostlyBF16:
      return GgmlType::kBF16;
    case LlamaFtype::kMostlyQ4_0:
      return GgmlType::kQ4_0;
    case LlamaFtype::kMostlyQ4_1:
      return GgmlType::kQ4_1;
    case LlamaFtype::kMostlyQ5_0:
      return GgmlType::kQ5_0;
    case LlamaFtype::kMostlyQ5_1:
      return GgmlType::kQ5_1;
    case LlamaFtype::kMostlyQ8_0:
      return GgmlType::kQ8_0;
    case LlamaFtype::kMostlyQ4_K_S:
    case LlamaFtype::kMostlyQ4_K_M:
      return GgmlType::kQ4_K;
    case LlamaFtype::kMostlyQ5_K_S:
    case LlamaFtype::kMostlyQ5_K_M:
      return GgmlType::kQ5_K;
    case LlamaFtype::kMostlyQ6_K:
      return GgmlType::kQ6_K;
  }
  fail(ErrorCode::kInternal, "unknown llama file type {}", static_cast<uint32_t>(ftype));
}

std::string_view llama_ftype_name(LlamaFtype ftype) {
  switch (ftype) {
    case LlamaFtype::kAllF32:
      return "F32";
    case LlamaFtype::kMostlyF16:
      return "F16";
    case LlamaFtype::kMostlyBF16:
      return "BF16";
    case LlamaFtype::kMostlyQ4_0:
      return "Q4_0";
    case LlamaFtype::kMostlyQ4_1:
      return "Q4_1";
    case LlamaFtype::kMostlyQ5_0:
      return "Q5_0";
    case LlamaFtype::kMostlyQ5_1:
      return "Q5_1";
    case LlamaFtype::kMostlyQ8_0:
      return "Q8_0";
    case LlamaFtype::kMostlyQ4_K_S:
      return "Q4_K_S";
    case LlamaFtype::kMostlyQ4_K_M:
      return "Q4_K_M";
    case LlamaFtype::kMostlyQ5_K_S:
      return "Q5_K_S";
    case LlamaFtype::kMostlyQ5_K_M:
      return "Q5_K_M";
    case LlamaFtype::kMostlyQ6_K:
      return "Q6_K";
  }
  fail(ErrorCode::kInternal, "unknown llama file type {}", static_cast<uint32_t>(ftype));
}

QuantMixModel QuantMixModel::from_tensor_names(std::span<const std::string> names, int n_layer) {
  QuantMixModel m;
  m.n_layer = n_layer;
  for (const std::string& n : names) {
    const Category c = category(n);
    if (c == Category::kAttnV) ++m.n_attention_wv;
    if (c == Category::kOutput) m.tied_embeddings = false;
  }
  return m;
}

bool quant_mix_quantizes(std::string_view name, std::span<const int64_t> ne) {
  // ggml_n_dims: trailing dimensions of 1 do not count.
  int n_dims = 1;
  for (size_t i = 1; i < ne.size(); ++i)
    if (ne[i] > 1) n_dims = static_cast<int>(i) + 1;
  if (n_dims < 2 || !name.ends_with("weight") || has(name, "_norm.weight")) return false;
  // Small or precision-critical tensors of other architectures that llama.cpp never quantizes.
  static constexpr std::string_view kKeep[] = {"ffn_gate_inp.weight",
                                               "ffn_gate_tid2eid.weight",
                                               "altup",
                                               "laurel",
                                               "per_layer_model_proj",
                                               "ssm_conv1d",
                                               "shortconv.conv.weight",
                                               "indexer.k_proj.weight",
                                               "indexer.q_proj.weight",
                                               "time_mix_first.weight",
                                               "time_mix_w0.weight",
                                               "time_mix_w1.weight",
                                               "time_mix_w2.weight",
                                               "time_mix_v0.weight",
                                               "time_mix_v1.weight",
                                               "time_mix_v2.weight",
                                               "time_mix_a0.weight",
                                               "time_mix_a1.weight",
                                               "time_mix_a2.weight",
                                               "time_mix_g1.weight",
                                               "time_mix_g2.weight",
                                               "time_mix_decay_w1.weight",
                                               "time_mix_decay_w2.weight",
                                               "time_mix_lerp_fused.weight",
                                               "attn_rel_b.weight",
                                               ".position_embd",
                                               "sam.pos_embd",
                                               "sam.neck.",
                                               "sam.net_",
                                               ".rel_pos",
                                               ".patch_embd",
                                               ".patch_merger",
                                               "a.rvq.codebook",
                                               "mm.a.code_embd"};
  for (std::string_view k : kKeep)
    if (has(name, k)) return false;
  return name != "position_embd.weight" && name != "token_types.weight";
}

GgmlType quant_mix_tensor_type(const QuantMix& mix, const QuantMixModel& model,
                               std::string_view name, std::span<const int64_t> ne) {
  if (ne.empty()) fail(ErrorCode::kInternal, "quantization mix: tensor {} has no dims", name);
  if (!quant_mix_quantizes(name, ne)) return GgmlType::kF32;
  const GgmlType def = llama_ftype_default_type(mix.ftype);
  if (!is_quantized(def)) return def;  // F32/F16/BF16 files: no rules, no fallback
  const GgmlType t = mix.pure ? def : mixed_type(mix.ftype, model, name, ne, def);
  return fallback(t, ne[0]);
}

}  // namespace nnpipe
