// AVX-512 BF16 products of a frozen bf16 weight (Numerics::kTorchBf16, opt-in LoRA training):
// the f32 operand is rounded to bf16 (round to nearest even, as torch rounds the activations of
// a bf16 model) and multiplied by the stored bf16 weight with f32 accumulation (vdpbf16ps).
// W is (O, I) as Hugging Face stores it, never copied or converted as a whole.
#pragma once
#include <cstdint>

namespace nnpipe::cpu {

// Whether this CPU runs the kernels below (AVX-512 F/BW/VL/BF16 and the OS's ZMM state), and
// they are not switched off by bf16_gemm_force_emulation.
bool bf16_gemm_available();
// Tests: true makes bf16_gemm_available() false, so that the backend takes its emulated path
// (operand rounded to bf16, then f32 sgemm) on this CPU too.
void bf16_gemm_force_emulation(bool on);

// y (N, O) = bf16(x) (N, I) W^T, W bf16 (O, I). Each output is a sum over i in a fixed order
// (pairs of i, in blocks of kBf16KBlock values), so it does not depend on N, on the other rows
// or on the thread count.
void bf16_matmul(float* y, const float* x, int64_t n, const uint16_t* w, int64_t o, int64_t in);
// dx (N, I) += bf16(dout) (N, O) W, W bf16 (O, I): the input gradient of the product above.
void bf16_matmul_dx(float* dx, const float* dout, int64_t n, const uint16_t* w, int64_t o,
                    int64_t in);

// The reduction dimension is summed in blocks of this many values, each block's f32 sum added to
// the output (so an output's rounding error grows with the reduction length, not past it).
inline constexpr int64_t kBf16KBlock = 1024;

}  // namespace nnpipe::cpu
