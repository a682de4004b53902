// Matrix products with weights in ggml block types (the inference engine's linear layers and
// lm_head), read in place from a GGUF mapping: never dequantized as a whole.
//
// Numerics follow ggml's CPU backend, so results track llama.cpp's on the same file: activations
// are converted to the weight type's vec_dot type before the dot products (F16 weights: activations
// rounded to f16; BF16: bf16; Q4_0/Q5_0/Q8_0: Q8_0 blocks; Q4_1/Q5_1: Q8_1; Q4_K/Q5_K/Q6_K: Q8_K;
// F32: exact f32), integer dot products per block, f32 accumulation.
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace nnpipe::cpu {

// Weight dtypes qmatmul accepts: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
bool qmatmul_supported(DType t);

// y (n, out) = x (n, in) W^T, f32 row-major (y's row stride is out), for a weight W (out, in): a
// 2-D CPU tensor of a supported dtype, owned or borrowed (e.g. from a GGUF mapping, at any
// alignment), each row whole blocks. Parallel over output rows with OpenMP (one thread for tiny
// products). Throws kUnsupported for other tensors, naming `what`.
// invariant: never the dequantize + sgemm path, and F16's several-token kernel in the one-token
// kernel's order, so that a row's result does not depend on n (Numerics::kGgmlInvariant).
void qmatmul(float* y, const float* x, int64_t n, const Tensor& w, const char* what = "qmatmul",
             bool invariant = false);

// Row r of W dequantized to f32 (in values): embedding lookups (ggml_get_rows).
void qmatmul_row(const Tensor& w, int64_t r, float* out, const char* what = "weight row");

}  // namespace nnpipe::cpu
