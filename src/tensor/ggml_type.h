// ggml's tensor type ids (the GGUF file format's type field) with their block geometry. Compute
// code sees DType (tensor/dtype.h); the block types are DTypes too, mapped by dtype_of_ggml /
// ggml_of_dtype. Lives below io/ so that backends can name the kernels' block types.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace nnpipe {

// ggml tensor types with their real ids. Ids 4, 5 and 31..33 were removed from ggml.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

struct GgmlTypeTraits {
  const char* name;     // gguf-py's GGMLQuantizationType name, e.g. "Q8_0"
  uint32_t block_size;  // elements per block
  uint32_t type_size;   // bytes per block
};

// nullopt for ids ggml does not define (or nnpipe does not know).
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id);
const GgmlTypeTraits& ggml_traits(GgmlType t);  // t must be a known type
std::optional<GgmlType> ggml_type_from_name(std::string_view name);

}  // namespace nnpipe
