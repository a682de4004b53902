// Element types of tensors and files. Block-quantized GGUF types join in the GGUF/quant issue.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace nnpipe {

enum class DType {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI8,
  kU8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kBool,
  kF8E4M3,
  kF8E5M2,
};

size_t dtype_size(DType t);
// safetensors spelling: "F32", "BF16", "F8_E4M3", ...
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// torch spelling used in config.json "torch_dtype": "float32", "bfloat16", "float16".
std::string_view dtype_torch_name(DType t);
std::optional<DType> dtype_from_torch_name(std::string_view name);

}  // namespace nnpipe
