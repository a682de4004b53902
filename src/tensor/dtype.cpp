#include "tensor/dtype.h"

namespace nnpipe {
namespace {

struct Info {
  DType t;
  size_t size;
  std::string_view name;
  std::string_view torch;
};

constexpr Info kInfo[] = {
    {DType::kF32, 4, "F32", "float32"},
    {DType::kF16, 2, "F16", "float16"},
    {DType::kBF16, 2, "BF16", "bfloat16"},
    {DType::kF64, 8, "F64", "float64"},
    {DType::kI8, 1, "I8", "int8"},
    {DType::kU8, 1, "U8", "uint8"},
    {DType::kI16, 2, "I16", "int16"},
    {DType::kU16, 2, "U16", "uint16"},
    {DType::kI32, 4, "I32", "int32"},
    {DType::kU32, 4, "U32", "uint32"},
    {DType::kI64, 8, "I64", "int64"},
    {DType::kU64, 8, "U64", "uint64"},
    {DType::kBool, 1, "BOOL", "bool"},
    {DType::kF8E4M3, 1, "F8_E4M3", "float8_e4m3fn"},
    {DType::kF8E5M2, 1, "F8_E5M2", "float8_e5m2"},
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
std::string_view dtype_name(DType t) {
  return info(t).name;
}
std::string_view dtype_torch_name(DType t) {
  return info(t).torch;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const Info& i : kInfo)
    if (i.name == name) return i.t;
  return std::nullopt;
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  for (const Info& i : kInfo)
    if (i.torch == name) return i.t;
  return std::nullopt;
}

}  // namespace nnpipe
