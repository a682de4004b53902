// ggml block quantization and dequantization: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
// Q5_K, Q6_K. Quantization reproduces llama.cpp's reference quantizers (quantize_row_*_ref, what
// llama-quantize uses without an importance matrix) byte for byte, so GGUF exports equal
// llama-quantize's; the non-K types also equal gguf-py's `gguf.quants.quantize` (but for the sign
// of zero in all-zero Q4_0/Q5_0 blocks). Dequantization equals gguf-py's. The conformance tests
// (tests/conformance/test_quants.py) check both.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "tensor/dtype.h"

namespace nnpipe {

// Types are DTypes (a GGUF file's GgmlType maps to one by dtype_of_ggml).
bool ggml_can_quantize(DType t);
bool ggml_can_dequantize(DType t);

// Quantizes rows of `n_per_row` floats into consecutive blocks. Throws kInvalidArgument when
// n_per_row is not a positive multiple of the block size or x is not whole rows, kUnsupported
// for a type nnpipe cannot quantize. Multithreaded over blocks; the bytes never depend on it.
std::vector<uint8_t> quantize_rows(DType t, std::span<const float> x, int64_t n_per_row);

// Expands `q` into out.size() floats; q must hold exactly out.size() / block_size blocks.
void dequantize_rows(DType t, std::span<const uint8_t> q, std::span<float> out);

}  // namespace nnpipe
