// The Qwen2 architecture's modules and their names in every format nnpipe reads or writes: HF
// checkpoints (transformers' state_dict), PEFT adapters (target_modules, tensor names), GGUF
// models and llama.cpp's LoRA GGUF. These names are file formats; this table is the one place
// they are spelled. Header-only and standard-library-only, so that every layer may include it
// (io, model, engine, export, train). Shapes from a ModelConfig: arch/qwen2_weights.h.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nnpipe::qwen2 {

// The linear modules: the seven of each block in transformers' (= PEFT's = llama.cpp's) order,
// then the output projection (lm_head, absent when tied to the embedding).
enum class Linear : uint8_t { kQ, kK, kV, kO, kGate, kUp, kDown, kLmHead };
inline constexpr int kNumBlockLinears = 7;  // kQ..kDown: the per-layer ones
inline constexpr int kNumLinears = 8;

// A weight dimension, resolved against a ModelConfig by qwen2_linear_shape.
enum class Dim : uint8_t { kHidden, kQ, kKv, kIntermediate, kVocab };

struct LinearInfo {
  Linear id;
  // The HF module name, which is also PEFT's target_modules entry: "q_proj", "lm_head".
  const char* hf;
  // "self_attn" / "mlp" inside a block; "" for lm_head (a top-level module).
  const char* hf_parent;
  // The module path below "model.layers.N." for block modules, else below the root:
  // "self_attn.q_proj", "mlp.gate_proj", "lm_head". Tensors are "<path>.weight" / ".bias".
  const char* hf_path;
  // The GGUF name below "blk.N." (block) or the root: "attn_q", "ffn_gate", "output".
  const char* gguf;
  Dim out, in;  // the weight is [out, in] (HF and GGUF ne reversed alike)
  bool bias;    // Qwen2: q/k/v_proj carry a bias, nothing else does
};

inline constexpr std::array<LinearInfo, kNumLinears> kLinears = {{
    {Linear::kQ, "q_proj", "self_attn", "self_attn.q_proj", "attn_q", Dim::kQ, Dim::kHidden, true},
    {Linear::kK, "k_proj", "self_attn", "self_attn.k_proj", "attn_k", Dim::kKv, Dim::kHidden, true},
    {Linear::kV, "v_proj", "self_attn", "self_attn.v_proj", "attn_v", Dim::kKv, Dim::kHidden, true},
    {Linear::kO, "o_proj", "self_attn", "self_attn.o_proj", "attn_output", Dim::kHidden, Dim::kQ,
     false},
    {Linear::kGate, "gate_proj", "mlp", "mlp.gate_proj", "ffn_gate", Dim::kIntermediate,
     Dim::kHidden, false},
    {Linear::kUp, "up_proj", "mlp", "mlp.up_proj", "ffn_up", Dim::kIntermediate, Dim::kHidden,
     false},
    {Linear::kDown, "down_proj", "mlp", "mlp.down_proj", "ffn_down", Dim::kHidden,
     Dim::kIntermediate, false},
    {Linear::kLmHead, "lm_head", "", "lm_head", "output", Dim::kVocab, Dim::kHidden, false},
}};

// The other weight-bearing modules (embedding and RMSNorms), HF path <-> GGUF name, as above.
struct ModuleNames {
  const char* hf_path;
  const char* gguf;
  bool per_layer;  // below "model.layers.N." / "blk.N."
};
inline constexpr std::array<ModuleNames, 4> kOtherModules = {{
    {"model.embed_tokens", "token_embd", false},
    {"model.norm", "output_norm", false},
    {"input_layernorm", "attn_norm", true},
    {"post_attention_layernorm", "ffn_norm", true},
}};

inline constexpr const char* kHfLayerPrefix = "model.layers.";   // + "N." + hf_path
inline constexpr const char* kGgufLayerPrefix = "blk.";          // + "N." + gguf
inline constexpr const char* kPeftPrefix = "base_model.model.";  // + the HF module path

constexpr const LinearInfo& linear(Linear l) {
  return kLinears[static_cast<size_t>(l)];
}
constexpr bool is_block_linear(Linear l) {
  return static_cast<int>(l) < kNumBlockLinears;
}

// By HF module name ("q_proj", "lm_head"), i.e. a PEFT target_modules entry.
constexpr std::optional<Linear> linear_from_hf(std::string_view name) {
  for (const LinearInfo& i : kLinears)
    if (name == i.hf) return i.id;
  return std::nullopt;
}
// By GGUF name ("attn_q", "output").
constexpr std::optional<Linear> linear_from_gguf(std::string_view name) {
  for (const LinearInfo& i : kLinears)
    if (name == i.gguf) return i.id;
  return std::nullopt;
}

// The GGUF module name of an HF module path, or nullopt; `per_layer` says whether the path was
// below "model.layers.N." ("self_attn.q_proj" -> "attn_q", "model.norm" -> "output_norm").
constexpr std::optional<std::string_view> gguf_module_of_hf(std::string_view hf_path,
                                                            bool per_layer) {
  for (const LinearInfo& i : kLinears)
    if (is_block_linear(i.id) == per_layer && hf_path == i.hf_path) return i.gguf;
  for (const ModuleNames& m : kOtherModules)
    if (m.per_layer == per_layer && hf_path == m.hf_path) return m.gguf;
  return std::nullopt;
}
// The inverse: "attn_q" -> "self_attn.q_proj", "output" -> "lm_head".
constexpr std::optional<std::string_view> hf_module_of_gguf(std::string_view gguf, bool per_layer) {
  for (const LinearInfo& i : kLinears)
    if (is_block_linear(i.id) == per_layer && gguf == i.gguf) return i.hf_path;
  for (const ModuleNames& m : kOtherModules)
    if (m.per_layer == per_layer && gguf == m.gguf) return m.hf_path;
  return std::nullopt;
}

// The table is indexed by the enum; the code that iterates blocks relies on this order.
static_assert([] {
  for (size_t i = 0; i < kLinears.size(); ++i)
    if (static_cast<size_t>(kLinears[i].id) != i) return false;
  return true;
}());
static_assert(linear_from_hf("down_proj") == Linear::kDown && !linear_from_hf("embed_tokens"));
static_assert(gguf_module_of_hf("lm_head", false) == "output");
static_assert(hf_module_of_gguf("ffn_norm", true) == "post_attention_layernorm");

}  // namespace nnpipe::qwen2
