// Per-block kernels for the legacy ggml quant types. Quantization is llama.cpp's reference code
// (quantize_row_*_ref), which gguf-py's numpy quantizers port: scales are f32 quotients rounded to
// f16 (round-to-nearest-even), 1/d is taken once and multiplied (not divided per element), Q4/Q5
// codes truncate x*id + 0.5 (+ offset) and clamp, Q8_0 rounds half away from zero. a*b+c stays
// unfused (-ffp-contract=off, set for src/quant in CMakeLists.txt), as in ggml's build and numpy.
#include "quant/ggml_quants.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_quants_k.h"
#include "quant/ggml_rounding.h"

namespace nnpipe {

static_assert(std::endian::native == std::endian::little, "block layouts are little-endian");

namespace {

float get_f16(uint16_t h) {
  return f16_to_f32(h);
}

// The legacy quantizers are llama.cpp's quantize_row_*_ref (ggml-quants.c), which its
// llama-quantize runs when there is no importance matrix, statement for statement: the same f32
// operations in the same order, the same initial values of the running max/min (so an all-zero
// block's scale gets ggml's sign of zero), and ggml's float->int8/uint8 casts as x86-64 performs
// them (x86_cvtt_*). gguf-py's numpy port gives the same bytes except for the sign of zero in
// blocks of only +/-0.0 (see tests/conformance/test_quants.py).

void quant_q8_0(const float* x, uint8_t* y) {
  auto* b = reinterpret_cast<block_q8_0*>(y);
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = f32_to_f16(d);
  for (int j = 0; j < kQK; ++j)  // roundf
    b->qs[j] = static_cast<int8_t>(x86_cvtt_u8(std::round(x[j] * id)));
}

// Q4_0 (bits 4, offset 8) and Q5_0 (bits 5, offset 16): symmetric, d = max / -offset where max is
// the first value of largest magnitude (+0.0 when every |x| is 0).
template <int kBits>
void quant_sym(const float* x, uint8_t* y) {
  using Block = std::conditional_t<kBits == 4, block_q4_0, block_q5_0>;
  auto* b = reinterpret_cast<Block*>(y);
  constexpr int kOff = 1 << (kBits - 1);
  constexpr int kMaxQ = 2 * kOff - 1;
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -static_cast<float>(kOff);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = f32_to_f16(d);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    // MIN(maxq, (int8_t)(x*id + offset + 0.5)) stored as uint8_t
    const auto q = [&](float v) {
      return static_cast<uint8_t>(std::min<int>(kMaxQ, x86_cvtt_i8(v * id + (kOff + 0.5f))));
    };
    const uint8_t q0 = q(x[j]), q1 = q(x[j + kQK / 2]);
    if constexpr (kBits == 4) {
      b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    } else {
      b->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    }
  }
  if constexpr (kBits == 5) b->qh = qh;
}

// Q4_1 / Q5_1: affine, x ~ d*q + min.
template <int kBits>
void quant_affine(const float* x, uint8_t* y) {
  using Block = std::conditional_t<kBits == 4, block_q4_1, block_q5_1>;
  auto* b = reinterpret_cast<Block*>(y);
  constexpr int kMaxQ = (1 << kBits) - 1;
  float mn = std::numeric_limits<float>::max(), mx = -std::numeric_limits<float>::max();
  for (int j = 0; j < kQK; ++j) {
    if (x[j] < mn) mn = x[j];
    if (x[j] > mx) mx = x[j];
  }
  const float d = (mx - mn) / static_cast<float>(kMaxQ);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b->d = f32_to_f16(d);
  b->m = f32_to_f16(mn);
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    const float v0 = (x[j] - mn) * id + 0.5f, v1 = (x[j + kQK / 2] - mn) * id + 0.5f;
    if constexpr (kBits == 4) {  // MIN(15, (int8_t)v) as uint8_t
      const auto q0 = static_cast<uint8_t>(std::min<int>(15, x86_cvtt_i8(v0)));
      const auto q1 = static_cast<uint8_t>(std::min<int>(15, x86_cvtt_i8(v1)));
      b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    } else {  // (uint8_t)v, no clamp
      const uint8_t q0 = x86_cvtt_u8(v0), q1 = x86_cvtt_u8(v1);
      b->qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    }
  }
  if constexpr (kBits == 5) b->qh = qh;
}

void dequant_q8_0(const uint8_t* p, float* y) {
  const auto* b = reinterpret_cast<const block_q8_0*>(p);
  const float d = get_f16(b->d);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b->qs[j]) * d;
}

// 4- or 5-bit code j of a legacy block: low nibble holds j < 16, high nibble j >= 16.
template <int kBits>
int legacy_code(const uint8_t* qs, uint32_t qh, int j) {
  int q = (j < kQK / 2 ? qs[j] : qs[j - kQK / 2] >> 4) & 0xF;
  if constexpr (kBits == 5) q |= static_cast<int>((qh >> j) & 1u) << 4;
  return q;
}

template <int kBits>
void dequant_sym(const uint8_t* p, float* y) {
  using Block = std::conditional_t<kBits == 4, block_q4_0, block_q5_0>;
  const auto* b = reinterpret_cast<const Block*>(p);
  const float d = get_f16(b->d);
  uint32_t qh = 0;
  if constexpr (kBits == 5) qh = b->qh;
  for (int j = 0; j < kQK; ++j)
    y[j] = d * static_cast<float>(legacy_code<kBits>(b->qs, qh, j) - (1 << (kBits - 1)));
}

template <int kBits>
void dequant_affine(const uint8_t* p, float* y) {
  using Block = std::conditional_t<kBits == 4, block_q4_1, block_q5_1>;
  const auto* b = reinterpret_cast<const Block*>(p);
  const float d = get_f16(b->d);
  const float m = get_f16(b->m);
  uint32_t qh = 0;
  if constexpr (kBits == 5) qh = b->qh;
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(legacy_code<kBits>(b->qs, qh, j)) + m;
}

using QuantFn = void (*)(const float*, uint8_t*);
using DequantFn = void (*)(const uint8_t*, float*);

void quant_f32(const float* x, uint8_t* y) {
  std::memcpy(y, x, 4);
}
void quant_f16(const float* x, uint8_t* y) {
  uint16_t h = f32_to_f16(*x);
  std::memcpy(y, &h, 2);
}
void quant_bf16(const float* x, uint8_t* y) {
  uint16_t h = f32_to_bf16(*x);
  std::memcpy(y, &h, 2);
}
void dequant_f32(const uint8_t* b, float* y) {
  std::memcpy(y, b, 4);
}
void dequant_f16(const uint8_t* b, float* y) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  *y = f16_to_f32(h);
}
void dequant_bf16(const uint8_t* b, float* y) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  *y = bf16_to_f32(h);
}

QuantFn quant_fn(DType t) {
  switch (t) {
    case DType::kF32:
      return quant_f32;
    case DType::kF16:
      return quant_f16;
    case DType::kBF16:
      return quant_bf16;
    case DType::kQ8_0:
      return quant_q8_0;
    case DType::kQ4_0:
      return quant_sym<4>;
    case DType::kQ5_0:
      return quant_sym<5>;
    case DType::kQ4_1:
      return quant_affine<4>;
    case DType::kQ5_1:
      return quant_affine<5>;
    case DType::kQ6_K:
      return quant_block_q6_k;
    case DType::kQ4_K:
      return quant_block_q4_k;
    case DType::kQ5_K:
      return quant_block_q5_k;
    default:
      return nullptr;
  }
}

DequantFn dequant_fn(DType t) {
  switch (t) {
    case DType::kF32:
      return dequant_f32;
    case DType::kF16:
      return dequant_f16;
    case DType::kBF16:
      return dequant_bf16;
    case DType::kQ8_0:
      return dequant_q8_0;
    case DType::kQ4_0:
      return dequant_sym<4>;
    case DType::kQ5_0:
      return dequant_sym<5>;
    case DType::kQ4_1:
      return dequant_affine<4>;
    case DType::kQ5_1:
      return dequant_affine<5>;
    case DType::kQ4_K:
      return dequant_block_q4_k;
    case DType::kQ5_K:
      return dequant_block_q5_k;
    case DType::kQ6_K:
      return dequant_block_q6_k;
    default:
      return nullptr;
  }
}

// Below this many blocks threads cost more than they save.
constexpr int64_t kParallelBlocks = 4096;

}  // namespace

bool ggml_can_quantize(DType t) {
  return quant_fn(t) != nullptr;
}
bool ggml_can_dequantize(DType t) {
  return dequant_fn(t) != nullptr;
}

std::vector<uint8_t> quantize_rows(DType t, std::span<const float> x, int64_t n_per_row) {
  const QuantFn fn = quant_fn(t);
  const std::string_view name = dtype_name(t);
  if (!fn) fail(ErrorCode::kUnsupported, "quantization to {} is not implemented", name);
  const int64_t bs = dtype_block_size(t);
  const int64_t ts = static_cast<int64_t>(dtype_size(t));
  if (n_per_row <= 0 || n_per_row % bs != 0)
    fail(ErrorCode::kInvalidArgument, "{}: row length {} is not a positive multiple of {}", name,
         n_per_row, bs);
  if (x.size() % static_cast<uint64_t>(n_per_row) != 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} values are not whole rows of {}", name, x.size(),
         n_per_row);
  const int64_t nb = static_cast<int64_t>(x.size()) / bs;
  std::vector<uint8_t> out(static_cast<size_t>(nb * ts));
  const float* src = x.data();
  uint8_t* dst = out.data();
#pragma omp parallel for schedule(static) if (nb >= kParallelBlocks)
  for (int64_t i = 0; i < nb; ++i) fn(src + i * bs, dst + i * ts);
  return out;
}

void dequantize_rows(DType t, std::span<const uint8_t> q, std::span<float> out) {
  const DequantFn fn = dequant_fn(t);
  const std::string_view name = dtype_name(t);
  if (!fn) fail(ErrorCode::kUnsupported, "dequantization of {} is not implemented", name);
  const int64_t bs = dtype_block_size(t);
  const int64_t ts = static_cast<int64_t>(dtype_size(t));
  if (out.size() % static_cast<uint64_t>(bs) != 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} values are not whole blocks of {}", name, out.size(),
         bs);
  const int64_t nb = static_cast<int64_t>(out.size()) / bs;
  if (q.size() != static_cast<uint64_t>(nb * ts))
    fail(ErrorCode::kInvalidArgument, "{}: {} bytes for {} values, expected {}", name, q.size(),
         out.size(), nb * ts);
  const uint8_t* src = q.data();
  float* dst = out.data();
#pragma omp parallel for schedule(static) if (nb >= kParallelBlocks)
  for (int64_t i = 0; i < nb; ++i) fn(src + i * ts, dst + i * bs);
}

}  // namespace nnpipe
