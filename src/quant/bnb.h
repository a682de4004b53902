// bitsandbytes' weight quantizers, as transformers runs them on CPU when it loads a model with
// BitsAndBytesConfig (bitsandbytes 0.50, torch's default kernels):
//  - LLM.int8 row-wise absmax (Int8Params): the weight is cast to f16, SCB = max|row| (f32),
//    q = round_half_even(w * (127 / SCB)) as int8; dequantized as q * SCB * (1/127).
//  - 4-bit blockwise (Params4bit, NF4 / FP4): absmax per block of `blocksize` values (f32), the
//    value scaled by 1/absmax and clamped to [-1, 1] takes the code whose decision interval holds
//    it (midpoints between sorted codes; a value exactly on a midpoint takes the lower code, as
//    torch.bucketize does); two codes per byte, the first element in the high nibble.
//  - nested ("double") quantization of the 4-bit absmax: offset = torch's f32 mean of absmax,
//    absmax - offset blockwise-quantized to 8 bits with bitsandbytes' dynamic map in blocks of 256.
// Every operation is the f32 operation torch performs, in the same order (built with
// -ffp-contract=off), so quantizing gives bitsandbytes' bytes and dequantizing its floats.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace nnpipe {

enum class Bnb4bitType { kNF4, kFP4 };
const char* bnb4bit_type_name(Bnb4bitType t);  // "nf4", "fp4"

// The 16 code values in code order (bitsandbytes' get_4bit_type, f32).
const std::array<float, 16>& bnb4bit_code(Bnb4bitType t);
// bitsandbytes' 8-bit signed dynamic map (create_dynamic_map(), sorted, 256 f32 values): the
// quant_map of nested absmax.
const std::array<float, 256>& bnb_dynamic_map();
// Blocksizes bitsandbytes accepts for 4-bit quantization.
bool bnb4bit_valid_blocksize(int64_t blocksize);

// ---- LLM.int8 ----
struct BnbInt8 {
  std::vector<int8_t> cb;  // (rows, cols)
  std::vector<float> scb;  // (rows)
};
// `w` (rows, cols) row-major. Values are first rounded to f16 (as Int8Params does); a row that
// overflows f16 throws kUnsupported.
BnbInt8 bnb_quantize_int8(std::span<const float> w, int64_t rows, int64_t cols);
// (rows, cols) f32: int8_vectorwise_dequant.
void bnb_dequantize_int8(std::span<const int8_t> cb, std::span<const float> scb, int64_t cols,
                         std::span<float> out);

// ---- 4-bit ----
struct Bnb4bit {
  std::vector<uint8_t> packed;  // ceil(n / 2) bytes
  std::vector<float> absmax;    // ceil(n / blocksize)
};
// `x`: the flattened tensor (n values). Non-finite values throw kInvalidArgument.
Bnb4bit bnb_quantize_4bit(std::span<const float> x, int64_t blocksize, Bnb4bitType type);
// out.size() values (n) from `packed` and one absmax per block.
void bnb_dequantize_4bit(std::span<const uint8_t> packed, std::span<const float> absmax,
                         int64_t blocksize, Bnb4bitType type, std::span<float> out);

// ---- 8-bit blockwise (nested absmax) ----
struct BnbNested {
  std::vector<uint8_t> q;     // one code index per absmax value
  std::vector<float> absmax;  // ceil(n / blocksize) block maxima of |absmax - offset|
  float offset = 0;           // mean of the original absmax
};
inline constexpr int64_t kBnbNestedBlocksize = 256;
// Nearest code of the dynamic map to (v - offset) / block absmax (a tie takes the lower code).
BnbNested bnb_quantize_nested(std::span<const float> absmax,
                              int64_t blocksize = kBnbNestedBlocksize);
// absmax[i] = code[q[i]] * nested_absmax[i / blocksize] + offset (f32), like dequantize_blockwise.
void bnb_dequantize_nested(std::span<const uint8_t> q, std::span<const float> nested_absmax,
                           std::span<const float> code, int64_t blocksize, float offset,
                           std::span<float> out);

// torch.sum of a contiguous f32 vector on a CPU with torch's AVX2 kernels (cascade_sum with
// 8-lane vectors, 4-way ILP), single-threaded: torch splits sums of 32768 values or more across its
// threads, so above that only the thread count of 1 is reproduced.
float torch_sum_f32(std::span<const float> x);
// torch.mean: the sum above divided by n in f32.
float torch_mean_f32(std::span<const float> x);

}  // namespace nnpipe
