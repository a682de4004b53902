// Token embedding lookup and its scatter-add backward.
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/qmatmul.h"

namespace nnpipe::cpu {

void CpuBackend::embedding(Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), v = table.dim(0), c = table.dim(1);
  check_tensor(out, DType::kF32, {n, c}, "embedding out");
  const int32_t* id = i32(ids, "ids");
  const bool half = is_half(table.dtype());  // frozen half table: convert the looked-up rows
  if (table.borrowed() || dtype_is_block(table.dtype())) {
    // A table borrowed from a model file, possibly quantized: ggml_get_rows dequantizes rows.
    float* o = f32(out, "out");
    for (int64_t r = 0; r < n; ++r) {
      if (id[r] < 0 || id[r] >= v)
        fail(ErrorCode::kInvalidArgument, "embedding: token id {} out of range [0, {})", id[r], v);
      qmatmul_row(table, id[r], o + r * c, "embedding table");
    }
    return;
  }
  const float* w = half ? nullptr : f32(table, "table");
  float* o = f32(out, "out");
  for (int64_t r = 0; r < n; ++r) {
    if (id[r] < 0 || id[r] >= v)
      fail(ErrorCode::kInvalidArgument, "embedding: token id {} out of range [0, {})", id[r], v);
    if (half)
      half_to_f32(table, id[r] * c, c, o + r * c);
    else
      std::memcpy(o + r * c, w + id[r] * c, static_cast<size_t>(c) * sizeof(float));
  }
}

// Serial: repeated ids add into the same row (a parallel loop would race).
void CpuBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const int64_t n = ids.numel(), v = dtable.dim(0), c = dtable.dim(1);
  check_tensor(dout, DType::kF32, {n, c}, "embedding_backward dout");
  const int32_t* id = i32(ids, "ids");
  const float* g = f32(dout, "dout");
  float* dw = f32(dtable, "dtable");
  for (int64_t r = 0; r < n; ++r) {
    if (id[r] < 0 || id[r] >= v)
      fail(ErrorCode::kInvalidArgument, "embedding: token id {} out of range [0, {})", id[r], v);
    for (int64_t i = 0; i < c; ++i) dw[id[r] * c + i] += g[r * c + i];
  }
}

}  // namespace nnpipe::cpu
