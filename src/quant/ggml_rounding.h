// The rounding and float->integer conversions of llama.cpp's reference quantizers
// (ggml/src/ggml-quants.c), reproduced bit for bit so that our blocks equal llama-quantize's, even
// for inputs where the C code leaves the well-defined range (inf/NaN scales from f16 overflow,
// 1/d overflowing for subnormal weights, quotients beyond 2^22).
#pragma once
#include <bit>
#include <cstdint>

namespace nnpipe {

// ggml's nearest_int: adds 1.5 * 2^23 so that the f32 addition itself rounds to an integer (half
// to even) and reads it from the mantissa. Exact for |v| <= 2^22; beyond that (and for inf/NaN)
// it returns what the bit trick gives, as ggml's release builds do (their assert is compiled out).
inline int ggml_nearest_int(float v) {
  const float magic = v + 12582912.0f;
  const int32_t i = std::bit_cast<int32_t>(magic);
  return (i & 0x007fffff) - 0x00400000;
}

// C's float -> integer conversion as compiled for x86-64, where llama.cpp's reference files are
// made (cvttss2si): truncation toward zero, and INT32_MIN (the "integer indefinite") for NaN and
// values outside int32. ggml's `(int8_t)f` / `(uint8_t)f` casts keep the low byte of that; numpy's
// astype(uint8), used by gguf-py, gives the same bytes there.
inline int32_t x86_cvtt(float v) {
  if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(v);
}
inline int8_t x86_cvtt_i8(float v) {
  return static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(x86_cvtt(v)) & 0xFFu));
}
inline uint8_t x86_cvtt_u8(float v) {
  return static_cast<uint8_t>(static_cast<uint32_t>(x86_cvtt(v)) & 0xFFu);
}

}  // namespace nnpipe
