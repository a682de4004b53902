// Reference implementation of qmatmul: rows of W dequantized in chunks, multiplied in f32 by
// OpenBLAS. Correct for every supported type; the SIMD kernels with ggml's activation
// quantization replace it per type.
#include "backend/cpu/qmatmul.h"

#include <cblas.h>

#include <algorithm>
#include <span>
#include <vector>

#include "core/error.h"
#include "quant/ggml_quants.h"

namespace nnpipe::cpu {

size_t QMatrix::row_bytes() const {
  const GgmlTypeTraits& t = ggml_traits(type);
  return static_cast<size_t>(cols / t.block_size) * t.type_size;
}

bool qmatmul_supported(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void qmatrix_row(const QMatrix& w, int64_t r, float* out) {
  if (r < 0 || r >= w.rows)
    fail(ErrorCode::kInvalidArgument, "qmatrix_row: row {} of {}", r, w.rows);
  dequantize_rows(w.type, std::span<const uint8_t>(w.row(r), w.row_bytes()),
                  std::span<float>(out, static_cast<size_t>(w.cols)));
}

void qmatmul(float* y, const float* x, int64_t n, const QMatrix& w) {
  if (!qmatmul_supported(w.type))
    fail(ErrorCode::kUnsupported, "qmatmul: weight type {} is not supported",
         ggml_traits(w.type).name);
  const int64_t in = w.cols, o = w.rows;
  if (w.type == GgmlType::kF32) {
    // y (n, o) = x (n, in) W^T (in, o)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(o),
                static_cast<int>(in), 1.0f, x, static_cast<int>(in),
                reinterpret_cast<const float*>(w.data), static_cast<int>(in), 0.0f, y,
                static_cast<int>(o));
    return;
  }
  // ~4 MiB of dequantized rows per chunk.
  const int64_t chunk = std::min<int64_t>(o, std::max<int64_t>(16, (int64_t{1} << 20) / in));
  std::vector<float> buf(static_cast<size_t>(chunk * in));
  for (int64_t r0 = 0; r0 < o; r0 += chunk) {
    const int64_t rows = std::min(chunk, o - r0);
    dequantize_rows(w.type,
                    std::span<const uint8_t>(w.row(r0), static_cast<size_t>(rows) * w.row_bytes()),
                    std::span<float>(buf.data(), static_cast<size_t>(rows * in)));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                static_cast<int>(rows), static_cast<int>(in), 1.0f, x, static_cast<int>(in),
                buf.data(), static_cast<int>(in), 0.0f, y + r0, static_cast<int>(o));
  }
}

}  // namespace nnpipe::cpu
