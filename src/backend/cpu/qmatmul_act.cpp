// Activation conversion for qmatmul: what ggml-cpu's type_traits_cpu[vec_dot_type].from_float
// computes on an x86 AVX2 build, on every CPU (so the scalar and AVX2 paths see the same bytes).
// Block layouts: quant/ggml_blocks.h.
#include <climits>
#include <cmath>
#include <cstring>

#include "backend/cpu/qmatmul_kernels.h"
#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_rounding.h"

namespace nnpipe::cpu::qk {

namespace {

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

void quantize_q8_0(const float* x, int64_t cols, block_q8_0* y) {
  for (int64_t i = 0; i < cols / kQK; ++i, x += kQK) {
    float d;
    q8_block(x, d, y[i].qs);
    y[i].d = f32_to_f16(d);
  }
}

void quantize_q8_1(const float* x, int64_t cols, block_q8_1* y) {
  for (int64_t i = 0; i < cols / kQK; ++i, x += kQK) {
    float d;
    const int sum = q8_block(x, d, y[i].qs);
    y[i].d = f32_to_f16(d);
    y[i].s = f32_to_f16(d * static_cast<float>(sum));
  }
}

// ggml-quants.c quantize_row_q8_K_ref (x86's quantize_row_q8_K calls it): the scale comes from
// the first element of largest magnitude, with its sign; nearest_int rounds half to even.
void quantize_q8_K(const float* x, int64_t cols, block_q8_K* y) {
  for (int64_t i = 0; i < cols / kQK_K; ++i, x += kQK_K) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    int8_t* qs = y[i].qs;
    if (amax == 0.0f) {
      std::memset(&y[i], 0, sizeof(block_q8_K));
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
      y[i].bsums[j] = static_cast<int16_t>(sum);
    }
    y[i].d = 1.0f / iscale;
  }
}

}  // namespace

size_t act_row_bytes(DType weight, int64_t cols) {
  const DType a = dtype_activation(weight);
  return dtype_is_block(a) ? dtype_row_bytes(a, cols) : static_cast<size_t>(cols) * 4;
}

void convert_activations(DType weight, const float* x, int64_t cols, uint8_t* out) {
  const DType act = dtype_activation(weight);
  if (active_isa() == Isa::kAvx2 && avx2_convert_activations(act, x, cols, out)) return;
  float* f = reinterpret_cast<float*>(out);
  switch (act) {
    case DType::kQ8_0:
      return quantize_q8_0(x, cols, reinterpret_cast<block_q8_0*>(out));
    case DType::kQ8_1:
      return quantize_q8_1(x, cols, reinterpret_cast<block_q8_1*>(out));
    case DType::kQ8_K:
      return quantize_q8_K(x, cols, reinterpret_cast<block_q8_K*>(out));
    case DType::kF16:  // ggml_cpu_fp32_to_fp16: round to nearest even (F16C mode 0)
      for (int64_t i = 0; i < cols; ++i) f[i] = f16_to_f32(f32_to_f16(x[i]));
      return;
    case DType::kBF16:  // ggml_cpu_fp32_to_bf16: round to nearest even, NaN kept quiet
      for (int64_t i = 0; i < cols; ++i) f[i] = bf16_to_f32(f32_to_bf16(x[i]));
      return;
    default:
      std::memcpy(out, x, static_cast<size_t>(cols) * 4);
  }
}

namespace {
// d * q of every block of one activation row of Q8_0 or Q8_1 blocks.
template <typename Block>
void expand_q8(const Block* b, int64_t cols, float* out) {
  for (int64_t i = 0; i < cols / kQK; ++i) {
    const float d = f16_to_f32(b[i].d);
    for (int j = 0; j < kQK; ++j) *out++ = d * static_cast<float>(b[i].qs[j]);
  }
}
}  // namespace

void expand_activations(DType weight, const uint8_t* act, int64_t cols, float* out) {
  switch (dtype_activation(weight)) {
    case DType::kQ8_0:
      return expand_q8(reinterpret_cast<const block_q8_0*>(act), cols, out);
    case DType::kQ8_1:
      return expand_q8(reinterpret_cast<const block_q8_1*>(act), cols, out);
    case DType::kQ8_K: {
      const auto* b = reinterpret_cast<const block_q8_K*>(act);
      for (int64_t i = 0; i < cols / kQK_K; ++i) {
        const float d = b[i].d;
        for (int j = 0; j < kQK_K; ++j) *out++ = d * static_cast<float>(b[i].qs[j]);
      }
      return;
    }
    default:
      std::memcpy(out, act, static_cast<size_t>(cols) * 4);
  }
}

}  // namespace nnpipe::cpu::qk
