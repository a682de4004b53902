// Activation conversion for qmatmul: what ggml-cpu's type_traits_cpu[vec_dot_type].from_float
// computes on an x86 AVX2 build, on every CPU (so the scalar and AVX2 paths see the same bytes).
// Block layouts (ggml-common.h): block_q8_0 {f16 d; i8 qs[32]}, block_q8_1 {f16 d; f16 s;
// i8 qs[32]}, block_q8_K {f32 d; i8 qs[256]; i16 bsums[16]}.
#include <climits>
#include <cmath>
#include <cstring>

#include "backend/cpu/qmatmul_kernels.h"
#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_rounding.h"

namespace nnpipe::cpu::qk {

namespace {

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ggml-cpu/arch/x86/quants.c quantize_row_q8_0 / q8_1 (the AVX/AVX2 branch): d = amax / 127 but
// id = 127 / amax (not 1 / d as in quantize_row_q8_0_ref), and _mm256_round_ps(_MM_ROUND_NEAREST),
// i.e. half to even (the _ref version's roundf rounds half away from zero). The int8 packs
// saturate. Returns the block's sum of quants (q8_1's s = d * sum).
int q8_block(const float* x, float& d, int8_t* qs) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  uint32_t sum = 0;  // ggml sums the int32 lanes (wrapping) before the saturating packs
  for (int j = 0; j < 32; ++j) {
    const float v = std::nearbyint(x[j] * id);  // default rounding mode: half to even
    // cvtps_epi32: INT32_MIN for NaN and out-of-range values
    int q = std::isnan(v) || std::fabs(v) >= 2147483648.0f ? INT32_MIN : static_cast<int>(v);
    sum += static_cast<uint32_t>(q);
    q = q < -128 ? -128 : (q > 127 ? 127 : q);
    qs[j] = static_cast<int8_t>(q);
  }
  return static_cast<int>(sum);
}

void quantize_q8_0(const float* x, int64_t cols, uint8_t* y) {
  for (int64_t i = 0; i < cols / 32; ++i, x += 32, y += 34) {
    float d;
    q8_block(x, d, reinterpret_cast<int8_t*>(y + 2));
    put_f16(y, d);
  }
}

void quantize_q8_1(const float* x, int64_t cols, uint8_t* y) {
  for (int64_t i = 0; i < cols / 32; ++i, x += 32, y += 36) {
    float d;
    const int sum = q8_block(x, d, reinterpret_cast<int8_t*>(y + 4));
    put_f16(y, d);
    put_f16(y + 2, d * static_cast<float>(sum));
  }
}

// ggml-quants.c quantize_row_q8_K_ref (x86's quantize_row_q8_K calls it): the scale comes from
// the first element of largest magnitude, with its sign; nearest_int rounds half to even.
void quantize_q8_K(const float* x, int64_t cols, uint8_t* y) {
  for (int64_t i = 0; i < cols / 256; ++i, x += 256, y += 292) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    int8_t* qs = reinterpret_cast<int8_t*>(y + 4);
    int16_t bsums[16];
    if (amax == 0.0f) {
      std::memset(y, 0, 292);
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < 256; ++j) {
      const int v = ggml_nearest_int(iscale * x[j]);
      qs[j] = static_cast<int8_t>(v < 127 ? v : 127);
    }
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += qs[j * 16 + k];
      bsums[j] = static_cast<int16_t>(sum);
    }
    const float d = 1.0f / iscale;
    std::memcpy(y, &d, 4);
    std::memcpy(y + 260, bsums, 32);
  }
}

}  // namespace

GgmlType act_type(GgmlType weight) {
  switch (weight) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return weight;
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      return GgmlType::kQ8_0;
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
      return GgmlType::kQ8_1;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return GgmlType::kQ8_K;
    default:
      fail(ErrorCode::kUnsupported, "qmatmul: weight type {} is not supported",
           ggml_traits(weight).name);
  }
}

size_t act_row_bytes(GgmlType weight, int64_t cols) {
  switch (act_type(weight)) {
    case GgmlType::kQ8_0:
      return static_cast<size_t>(cols / 32) * 34;
    case GgmlType::kQ8_1:
      return static_cast<size_t>(cols / 32) * 36;
    case GgmlType::kQ8_K:
      return static_cast<size_t>(cols / 256) * 292;
    default:
      return static_cast<size_t>(cols) * 4;
  }
}

void convert_activations(GgmlType weight, const float* x, int64_t cols, uint8_t* out) {
  if (active_isa() == Isa::kAvx2 && avx2_convert_activations(act_type(weight), x, cols, out))
    return;
  float* f = reinterpret_cast<float*>(out);
  switch (act_type(weight)) {
    case GgmlType::kQ8_0:
      return quantize_q8_0(x, cols, out);
    case GgmlType::kQ8_1:
      return quantize_q8_1(x, cols, out);
    case GgmlType::kQ8_K:
      return quantize_q8_K(x, cols, out);
    case GgmlType::kF16:  // ggml_cpu_fp32_to_fp16: round to nearest even (F16C mode 0)
      for (int64_t i = 0; i < cols; ++i) f[i] = f16_to_f32(f32_to_f16(x[i]));
      return;
    case GgmlType::kBF16:  // ggml_cpu_fp32_to_bf16: round to nearest even, NaN kept quiet
      for (int64_t i = 0; i < cols; ++i) f[i] = bf16_to_f32(f32_to_bf16(x[i]));
      return;
    default:
      std::memcpy(out, x, static_cast<size_t>(cols) * 4);
  }
}

void expand_activations(GgmlType weight, const uint8_t* act, int64_t cols, float* out) {
  switch (act_type(weight)) {
    case GgmlType::kQ8_0:
    case GgmlType::kQ8_1: {
      const size_t bs = act_type(weight) == GgmlType::kQ8_0 ? 34 : 36;
      const size_t off = bs - 32;
      for (int64_t i = 0; i < cols / 32; ++i, act += bs) {
        const float d = get_f16(act);
        const int8_t* qs = reinterpret_cast<const int8_t*>(act + off);
        for (int j = 0; j < 32; ++j) *out++ = d * static_cast<float>(qs[j]);
      }
      return;
    }
    case GgmlType::kQ8_K:
      for (int64_t i = 0; i < cols / 256; ++i, act += 292) {
        float d;
        std::memcpy(&d, act, 4);
        const int8_t* qs = reinterpret_cast<const int8_t*>(act + 4);
        for (int j = 0; j < 256; ++j) *out++ = d * static_cast<float>(qs[j]);
      }
      return;
    default:
      std::memcpy(out, act, static_cast<size_t>(cols) * 4);
  }
}

}  // namespace nnpipe::cpu::qk
