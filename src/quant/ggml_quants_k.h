// Block dequantizers for the K-quants (256-element super-blocks): Q4_K, Q5_K, Q6_K.
#pragma once
#include <cstdint>

namespace nnpipe {

constexpr int kQK_K = 256;

void dequant_block_q4_k(const uint8_t* b, float* y);  // 144 bytes -> 256 floats
void dequant_block_q5_k(const uint8_t* b, float* y);  // 176 bytes -> 256 floats
void dequant_block_q6_k(const uint8_t* b, float* y);  // 210 bytes -> 256 floats

}  // namespace nnpipe
