#include "tensor/convert.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/half.h"

namespace nnpipe {
namespace {

template <typename T>
T load(const uint8_t* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}

}  // namespace

bool dtype_is_float(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF64:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return true;
    default:
      return false;
  }
}

float f8e4m3_to_f32(uint8_t b) {
  float sign = (b & 0x80) ? -1.0f : 1.0f;
  int e = (b >> 3) & 0xf, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);  // subnormal: m/8 * 2^-6
  return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

float f8e5m2_to_f32(uint8_t b) {
  return f16_to_f32(static_cast<uint16_t>(b << 8));
}

double float_element(DType t, const uint8_t* data, size_t i) {
  switch (t) {
    case DType::kF32:
      return load<float>(data, i);
    case DType::kF64:
      return load<double>(data, i);
    case DType::kF16:
      return f16_to_f32(load<uint16_t>(data, i));
    case DType::kBF16:
      return bf16_to_f32(load<uint16_t>(data, i));
    case DType::kF8E4M3:
      return f8e4m3_to_f32(data[i]);
    case DType::kF8E5M2:
      return f8e5m2_to_f32(data[i]);
    default:
      fail(ErrorCode::kUnsupported, "{} is not a float dtype", dtype_name(t));
  }
}

std::vector<float> to_f32(DType t, std::span<const uint8_t> data) {
  if (!dtype_is_float(t)) fail(ErrorCode::kUnsupported, "{} is not a float dtype", dtype_name(t));
  size_t n = data.size() / dtype_size(t);
  std::vector<float> out(n);
  if (t == DType::kF32) {
    if (n) std::memcpy(out.data(), data.data(), n * 4);
    return out;
  }
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(float_element(t, data.data(), i));
  return out;
}

std::vector<uint8_t> from_f32(std::span<const float> src, DType t) {
  std::vector<uint8_t> out(src.size() * dtype_size(t));
  uint8_t* p = out.data();
  for (size_t i = 0; i < src.size(); ++i) {
    switch (t) {
      case DType::kF32:
        std::memcpy(p + 4 * i, &src[i], 4);
        break;
      case DType::kF64: {
        double d = src[i];
        std::memcpy(p + 8 * i, &d, 8);
        break;
      }
      case DType::kF16: {
        uint16_t h = f32_to_f16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::kBF16: {
        uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      default:
        fail(ErrorCode::kUnsupported, "cannot store float32 values as {}", dtype_name(t));
    }
  }
  return out;
}

}  // namespace nnpipe
