// Export of a Hugging Face Qwen2 directory to a GGUF model that llama.cpp loads: the KV pairs,
// tokenizer arrays and tensor names of docs FORMATS.md "A Qwen2 model in GGUF", laid out as
// convert_hf_to_gguf.py does.
#pragma once
#include <optional>
#include <string_view>

#include "core/file.h"
#include "io/gguf.h"

namespace nnpipe {

// The export types the CLI accepts by lower-case name (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0,
// q5_1); nullopt for anything else.
std::optional<GgmlType> gguf_export_type_from_name(std::string_view name);

struct GgufExportSummary {
  size_t tensors = 0;
  uint64_t bytes = 0;  // file size
};

// Writes `out` atomically. 1-D tensors (norms, biases) stay F32; 2-D weights get `type`, or F16
// when a row length is not a multiple of the block size (convert_hf_to_gguf.py's fallback).
GgufExportSummary export_model_gguf(const fs::path& model_dir, GgmlType type, const fs::path& out);

}  // namespace nnpipe
