// `nnpipe quantize` (pipeline step quantize_model): a Hugging Face Qwen2 directory -> a 16-bit,
// LLM.int8 or 4-bit (NF4/FP4) Hugging Face directory, the files transformers + bitsandbytes write
// with model.save_pretrained() after from_pretrained(...,
// quantization_config=BitsAndBytesConfig(..)). As transformers does, only the linear layers of the
// decoder (q/k/v/o/gate/up/down weights) are quantized; embeddings, lm_head (tied or not), norms
// and biases keep the model's torch_dtype, and a tied model stores no lm_head. The input is cast to
// torch_dtype first (what from_pretrained loads), then quantized (src/quant/bnb.h).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/json.h"
#include "quant/bnb.h"
#include "tensor/dtype.h"

namespace nnpipe {

struct HfQuantizeOptions {
  int bits = 4;                // 16, 8 or 4
  DType dtype = DType::kBF16;  // bits 16: bfloat16 or float16
  Bnb4bitType quant_type = Bnb4bitType::kNF4;
  int64_t blocksize = 64;              // bits 4
  bool double_quant = false;           // bits 4: bnb_4bit_use_double_quant
  std::optional<DType> compute_dtype;  // bits 4: bnb_4bit_compute_dtype; unset: the model's dtype
  uint64_t max_shard_bytes = 5'000'000'000;
};

// "nf4" / "fp4" (CLI and pipeline parameters).
Bnb4bitType bnb4bit_type_from_name(
    const std::string& name);  // "nf4" | "fp4", else kInvalidArgument

struct QuantizedTensorStats {
  std::string name;
  std::string format;  // "int8", "nf4", "fp4", or the dtype name ("bfloat16", ...)
  std::vector<int64_t> shape;
  uint64_t bytes_before = 0, bytes_after = 0;  // stored bytes (after: every key of the tensor)
  double max_abs_err = 0, rmse = 0;
  double rel_rmse = 0;  // rmse / rms of the original (0 for an all-zero tensor)
};

struct QuantizeSummary {
  int bits = 0;
  std::string method;  // "bf16", "f16", "int8", "nf4", "fp4" (+ "+dq" with double quantization)
  std::string out_dir;
  std::vector<std::string> files;
  std::vector<QuantizedTensorStats> tensors;  // in qwen2_weight_specs order
  int64_t quantized_tensors = 0;
  uint64_t bytes_before = 0, bytes_after = 0;      // all tensor data
  double max_abs_err = 0, rmse = 0, rel_rmse = 0;  // over every weight of the model
  json quantization_config;                        // null for 16-bit
  json to_json() const;
};

// Writes `out_dir` atomically (built beside it, renamed into place; replaces an existing one):
// config.json (input config + quantization_config, or the new dtype for 16-bit), model.safetensors
// (or shards), and the tokenizer and generation files copied verbatim. Errors: kInvalidArgument for
// options, kNotFound / kFormat naming the input file, kUnsupported for an input that is already
// quantized.
QuantizeSummary quantize_model(const fs::path& model_dir, const HfQuantizeOptions& opt,
                               const fs::path& out_dir);

// The quantization_config transformers writes for these options (BitsAndBytesConfig.to_dict()).
json bnb_quantization_config(const HfQuantizeOptions& opt, DType model_dtype);

// Python's repr() of a float (shortest round-trip digits, exponent form below 1e-4 or from 1e16),
// as json.dumps writes it: the quant_state JSON must be bitsandbytes' bytes.
std::string python_float_repr(double v);

}  // namespace nnpipe
