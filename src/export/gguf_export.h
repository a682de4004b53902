// Export of a Hugging Face Qwen2 directory to a GGUF model that llama.cpp loads: the KV pairs,
// tokenizer arrays and tensor names of docs FORMATS.md "A Qwen2 model in GGUF", laid out as
// convert_hf_to_gguf.py does, with the tensor types llama-quantize would give them.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/file.h"
#include "export/quant_mix.h"
#include "io/gguf.h"

namespace nnpipe {

// The --type names of `nnpipe export-gguf`, each a llama.cpp file type and mix (quant_mix.h):
//   f32, f16, bf16                  every 2-D weight in that type (LLAMA_FTYPE ALL_F32/MOSTLY_*)
//   q8_0, q4_0, q4_1, q5_0, q5_1    llama-quantize's Q8_0 ... Q5_1: the default type, but
//                                   output.weight (or the tied token_embd) gets Q6_K (Q8_0 files
//                                   keep Q8_0)
//   q4_k_s, q4_k_m, q5_k_s, q5_k_m  llama-quantize's K-quant mixes of the same names
//   q6_k                            llama-quantize's Q6_K (every quantizable weight Q6_K)
//   q4_k, q5_k                      every quantizable weight Q4_K / Q5_K: llama-quantize --pure
//                                   Q4_K_S / Q5_K_S (general.file_type says Q4_K_S / Q5_K_S)
// Row lengths a type's block does not divide fall back as llama-quantize does (Q4_K -> Q5_0,
// Q5_K -> Q5_1, Q6_K -> Q8_0, then F16). nullopt for any other name.
std::optional<QuantMix> gguf_export_type_from_name(std::string_view name);
// "f32, f16, ..." for help texts and errors.
std::string gguf_export_type_names();
// The mix whose default type is `t` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K: that
// llama.cpp file type; Q4_K, Q5_K: pure), for callers that think in tensor types.
std::optional<QuantMix> quant_mix_for_type(GgmlType t);

struct GgufExportSummary {
  size_t tensors = 0;
  uint64_t bytes = 0;                         // file size
  std::map<std::string, size_t> type_counts;  // ggml type name -> number of tensors
};

// Writes `out` atomically: the model's KVs (general.file_type = the mix's llama file type,
// general.quantization_version = 2, as llama-quantize sets them), tokenizer and tensors, each
// tensor in the type quant_mix_tensor_type gives (1-D tensors and norms stay F32). The bytes equal
// llama-quantize's output for an F32 export of the same model (--pure when mix.pure).
GgufExportSummary export_model_gguf(const fs::path& model_dir, const QuantMix& mix,
                                    const fs::path& out);

}  // namespace nnpipe
