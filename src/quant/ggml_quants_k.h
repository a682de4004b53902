// K-quants (256-element super-blocks): dequantization of Q4_K, Q5_K, Q6_K, and their quantization
// byte-identical to llama.cpp's reference quantizers (quantize_row_q{4,5,6}_K_ref, which
// llama-quantize uses when no importance matrix is given).
#pragma once
#include <cstdint>

#include "quant/ggml_blocks.h"

namespace nnpipe {

void dequant_block_q4_k(const uint8_t* b, float* y);  // 144 bytes -> 256 floats
void dequant_block_q5_k(const uint8_t* b, float* y);  // 176 bytes -> 256 floats
void dequant_block_q6_k(const uint8_t* b, float* y);  // 210 bytes -> 256 floats
void quant_block_q6_k(const float* x, uint8_t* y);    // 256 floats -> 210 bytes
void quant_block_q4_k(const float* x, uint8_t* y);    // 256 floats -> 144 bytes
void quant_block_q5_k(const float* x, uint8_t* y);    // 256 floats -> 176 bytes

}  // namespace nnpipe
