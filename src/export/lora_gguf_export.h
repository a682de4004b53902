// Export of a PEFT LoRA adapter directory to a GGUF LoRA adapter that llama.cpp loads
// (llama_adapter_lora_init, llama-cli --lora): the layout llama.cpp's convert_lora_to_gguf.py
// writes (docs FORMATS.md "A LoRA adapter in GGUF"), checked against the base model first.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/file.h"
#include "io/gguf.h"

namespace nnpipe {

// The --type names of `nnpipe export-lora-gguf` (convert_lora_to_gguf.py's --outtype, less
// "auto"): f32, f16, bf16, q8_0. nullopt for any other name.
std::optional<GgmlType> lora_gguf_type_from_name(std::string_view name);
std::string lora_gguf_type_names();  // "f32, f16, bf16, q8_0"

struct LoraGgufExportSummary {
  size_t tensors = 0;  // 2 per adapted linear layer
  uint64_t bytes = 0;  // file size
  int64_t rank = 0;
  float alpha = 0;                            // adapter.lora.alpha as written
  std::map<std::string, size_t> type_counts;  // ggml type name -> number of tensors
};

// The general.* naming KVs convert_lora_to_gguf.py derives from the adapter directory's name when
// the directory has no model card or config.json naming it (gguf-py Metadata: id_to_title for the
// name; get_model_id_components splits the name at '-' into basename, finetune, version and size
// label parts). `total_params` is gguf-py's count for the file (negative for LoRA adapters: minus
// the summed out*in of the adapted layers). Exact for ASCII names.
struct GgufNameMetadata {
  std::string name;
  std::optional<std::string> version, finetune, basename, size_label;
};
GgufNameMetadata gguf_name_metadata_from_dir(const fs::path& dir, int64_t total_params);

// Writes `out` atomically (nothing is left behind on error) from the PEFT adapter in
// `adapter_dir` (adapter_config.json + adapter_model.safetensors, PeftAdapter::load) for the
// Hugging Face base model in `base_model_dir`. `type` is F32, F16, BF16 or Q8_0 (others:
// kInvalidArgument); as in convert_lora_to_gguf.py a Q8_0 tensor whose row (ne[0]: `in` for
// lora_a, r for lora_b) is not a multiple of 32 falls back to F16.
//
// KVs, in the converter's order: general.architecture "qwen2", general.type "adapter",
// adapter.type "lora", general.name [, general.version, general.finetune, general.basename,
// general.size_label] (gguf_name_metadata_from_dir), adapter.lora.alpha (FLOAT32),
// general.quantization_version 2. With use_rslora the alpha is lora_alpha * sqrt(r), so that
// llama.cpp's scale alpha / r equals PEFT's lora_alpha / sqrt(r) (the converter writes lora_alpha
// unchanged, which llama.cpp then applies with the non-rsLoRA scale). The descriptive KVs the
// converter takes from a model card README.md (general.tags, general.base_model.*, ...) are not
// written.
// Tensors, in the converter's order (the adapter's tensor names sorted as strings):
// blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a, ne [in, r],
// then .lora_b, ne [r, out]; the bytes equal gguf-py's quantization of the adapter's values.
//
// Errors name the file, the tensor and the reason: the base model cannot be opened; the adapter
// is malformed or uses a PEFT feature nnpipe does not support (kFormat/kUnsupported, from
// PeftAdapter::load); a LoRA on lm_head (kFormat when the base ties it to embed_tokens, so
// llama.cpp has no output.weight to apply it to; kUnsupported otherwise) or embed_tokens
// (kUnsupported); a layer the base lacks or a shape that does not match it (kFormat, "adapter for
// another model?").
LoraGgufExportSummary export_lora_gguf(const fs::path& adapter_dir, const fs::path& base_model_dir,
                                       GgmlType type, const fs::path& out);

}  // namespace nnpipe
