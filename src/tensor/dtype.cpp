#include "tensor/dtype.h"

#include "core/error.h"

namespace nnpipe {
namespace {

// One row per DType: the traits table.
struct Info {
  DType t;
  size_t size;    // bytes per element (per block for block types)
  int64_t block;  // elements per block
  std::string_view name;
  std::string_view torch;  // "" for block types
  std::optional<GgmlType> ggml;
  DType act;  // vec_dot activation type (weights only; itself otherwise)
};

constexpr Info kInfo[] = {
    {DType::kF32, 4, 1, "F32", "float32", GgmlType::kF32, DType::kF32},
    {DType::kF16, 2, 1, "F16", "float16", GgmlType::kF16, DType::kF16},
    {DType::kBF16, 2, 1, "BF16", "bfloat16", GgmlType::kBF16, DType::kBF16},
    {DType::kF64, 8, 1, "F64", "float64", GgmlType::kF64, DType::kF64},
    {DType::kI8, 1, 1, "I8", "int8", GgmlType::kI8, DType::kI8},
    {DType::kU8, 1, 1, "U8", "uint8", std::nullopt, DType::kU8},
    {DType::kI16, 2, 1, "I16", "int16", GgmlType::kI16, DType::kI16},
    {DType::kU16, 2, 1, "U16", "uint16", std::nullopt, DType::kU16},
    {DType::kI32, 4, 1, "I32", "int32", GgmlType::kI32, DType::kI32},
    {DType::kU32, 4, 1, "U32", "uint32", std::nullopt, DType::kU32},
    {DType::kI64, 8, 1, "I64", "int64", GgmlType::kI64, DType::kI64},
    {DType::kU64, 8, 1, "U64", "uint64", std::nullopt, DType::kU64},
    {DType::kBool, 1, 1, "BOOL", "bool", std::nullopt, DType::kBool},
    {DType::kF8E4M3, 1, 1, "F8_E4M3", "float8_e4m3fn", std::nullopt, DType::kF8E4M3},
    {DType::kF8E5M2, 1, 1, "F8_E5M2", "float8_e5m2", std::nullopt, DType::kF8E5M2},
    {DType::kQ8_0, 34, 32, "Q8_0", "", GgmlType::kQ8_0, DType::kQ8_0},
    {DType::kQ4_0, 18, 32, "Q4_0", "", GgmlType::kQ4_0, DType::kQ8_0},
    {DType::kQ4_1, 20, 32, "Q4_1", "", GgmlType::kQ4_1, DType::kQ8_1},
    {DType::kQ5_0, 22, 32, "Q5_0", "", GgmlType::kQ5_0, DType::kQ8_0},
    {DType::kQ5_1, 24, 32, "Q5_1", "", GgmlType::kQ5_1, DType::kQ8_1},
    {DType::kQ4_K, 144, 256, "Q4_K", "", GgmlType::kQ4_K, DType::kQ8_K},
    {DType::kQ5_K, 176, 256, "Q5_K", "", GgmlType::kQ5_K, DType::kQ8_K},
    {DType::kQ6_K, 210, 256, "Q6_K", "", GgmlType::kQ6_K, DType::kQ8_K},
    {DType::kQ8_1, 36, 32, "Q8_1", "", GgmlType::kQ8_1, DType::kQ8_1},
    {DType::kQ8_K, 292, 256, "Q8_K", "", GgmlType::kQ8_K, DType::kQ8_K},
};

const Info& info(DType t) {
  for (const Info& i : kInfo)
    if (i.t == t) return i;
  return kInfo[0];
}

}  // namespace

size_t dtype_size(DType t) {
  return info(t).size;
}
int64_t dtype_block_size(DType t) {
  return info(t).block;
}
bool dtype_is_block(DType t) {
  return info(t).block > 1;
}
size_t dtype_row_bytes(DType t, int64_t n) {
  const Info& i = info(t);
  if (n < 0 || n % i.block != 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} elements are not whole blocks of {}", i.name, n,
         i.block);
  return static_cast<size_t>(n / i.block) * i.size;
}
DType dtype_activation(DType weight) {
  return info(weight).act;
}
std::optional<GgmlType> ggml_of_dtype(DType t) {
  return info(t).ggml;
}
std::optional<DType> dtype_of_ggml(GgmlType g) {
  for (const Info& i : kInfo)
    if (i.ggml == g) return i.t;
  return std::nullopt;
}
std::string_view dtype_name(DType t) {
  return info(t).name;
}
std::string_view dtype_torch_name(DType t) {
  return info(t).torch;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const Info& i : kInfo)
    if (i.block == 1 && i.name == name) return i.t;
  return std::nullopt;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  for (const Info& i : kInfo)
    if (!i.torch.empty() && i.torch == name) return i.t;
  return std::nullopt;
}

}  // namespace nnpipe
