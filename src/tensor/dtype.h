// Element types of tensors and files. The GGML block types (Q8_0 ... Q6_K) are DTypes too: a
// Tensor can borrow a GGUF file's quantized bytes and a backend's matmul takes them as weights.
// A block type's tensor has a last dimension of whole blocks; its bytes are
// dtype_row_bytes(t, last dim) per row.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "tensor/ggml_type.h"

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
  // GGML blocks (ggml-common.h layouts, see quant/ggml_blocks.h).
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  // Activation blocks of the quantized dot products (never weights in a file nnpipe reads).
  kQ8_1,
  kQ8_K,
};

// Bytes per element, or per block for the block types.
size_t dtype_size(DType t);
// Elements per block: 1 for the element types, 32 or 256 for the block types.
int64_t dtype_block_size(DType t);
bool dtype_is_block(DType t);
// Bytes of n elements (n a multiple of the block size).
size_t dtype_row_bytes(DType t, int64_t n);
// The activation type of a weight type's dot product (ggml's vec_dot_type): F32 for F32, F16 for
// F16, BF16 for BF16, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants.
DType dtype_activation(DType weight);
// The ggml type id of a DType, and back (nullopt where there is none).
std::optional<GgmlType> ggml_of_dtype(DType t);
std::optional<DType> dtype_of_ggml(GgmlType t);

// safetensors spelling: "F32", "BF16", "F8_E4M3", ... (block types print their ggml names, but
// dtype_from_name never returns them: they are not safetensors dtypes).
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// torch spelling used in config.json "torch_dtype": "float32", "bfloat16", "float16".
std::string_view dtype_torch_name(DType t);
std::optional<DType> dtype_from_torch_name(std::string_view name);

}  // namespace nnpipe
