// Element conversions between raw little-endian buffers of any DType and float/double, for loading
// weights of any stored precision and for dumping values (nnpipe inspect --values).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "tensor/dtype.h"

namespace nnpipe {

bool dtype_is_float(DType t);
// Float8 (OCP e4m3fn: no infinities, 0x7f/0xff NaN; e5m2: the top byte of an fp16) -> float.
float f8e4m3_to_f32(uint8_t b);
float f8e5m2_to_f32(uint8_t b);

// Buffers may be unaligned (straight out of an mmap): everything is read with memcpy.
// Element `i` of a float buffer as double (exact for every float dtype).
double float_element(DType t, const uint8_t* data, size_t i);
// Float buffer (F32/F16/BF16/F64/F8_*) -> float32 (F64 rounds). Throws kUnsupported for ints.
std::vector<float> to_f32(DType t, std::span<const uint8_t> data);
// float32 -> F32/F16/BF16/F64 bytes (round to nearest even). Throws kUnsupported otherwise.
std::vector<uint8_t> from_f32(std::span<const float> src, DType t);

}  // namespace nnpipe
