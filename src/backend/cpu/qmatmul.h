// Matrix products with weights in ggml block types (the inference engine's linear layers and
// lm_head), read in place from a GGUF mapping: never dequantized as a whole.
//
// Numerics follow ggml's CPU backend, so results track llama.cpp's on the same file: activations
// are converted to the weight type's vec_dot type before the dot products (F16 weights: activations
// rounded to f16; BF16: bf16; Q4_0/Q5_0/Q8_0: Q8_0 blocks; Q4_1/Q5_1: Q8_1; Q4_K/Q5_K/Q6_K: Q8_K;
// F32: exact f32), integer dot products per block, f32 accumulation.
#pragma once
#include <cstddef>
#include <cstdint>

#include "tensor/ggml_type.h"
#include "tensor/tensor.h"

namespace nnpipe::cpu {

// A weight matrix W [rows = out features][cols = in features], row-major, each row whole blocks of
// `type` (cols % block_size == 0). Borrowed: `data` must outlive every call.
struct QMatrix {
  GgmlType type = GgmlType::kF32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;

  size_t row_bytes() const;  // cols / block_size * type_size
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes(); }
};

// Types qmatmul accepts: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
bool qmatmul_supported(GgmlType t);

// y (n, w.rows) = x (n, w.cols) W^T, f32 row-major (y's row stride is w.rows). Parallel over
// output rows with OpenMP (one thread for tiny products). Throws kUnsupported for other types.
// invariant: never the dequantize + sgemm path, so that a row's result does not depend on n.
void qmatmul(float* y, const float* x, int64_t n, const QMatrix& w, bool invariant = false);

// The QMatrix view of a 2-D CPU tensor of a qmatmul type (borrowed or owned); throws naming `what`.
QMatrix qmatrix_of(const Tensor& w, const char* what);

// Row r of W dequantized to f32 (w.cols values): embedding lookups (ggml_get_rows).
void qmatrix_row(const QMatrix& w, int64_t r, float* out);

}  // namespace nnpipe::cpu
