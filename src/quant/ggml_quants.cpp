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

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_quants_k.h"
#include "quant/ggml_rounding.h"

namespace nnpipe {

static_assert(std::endian::native == std::endian::little, "block layouts are little-endian");

namespace {

void put_f16(uint8_t* p, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The legacy quantizers are llama.cpp's quantize_row_*_ref (ggml-quants.c), which its
// llama-quantize runs when there is no importance matrix, statement for statement: the same f32
// operations in the same order, the same initial values of the running max/min (so an all-zero
// block's scale gets ggml's sign of zero), and ggml's float->int8/uint8 casts as x86-64 performs
// them (x86_cvtt_*). gguf-py's numpy port gives the same bytes except for the sign of zero in
// blocks of only +/-0.0 (see tests/conformance/test_quants.py).

constexpr int kQK = 32;

void quant_q8_0(const float* x, uint8_t* y) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  for (int j = 0; j < kQK; ++j) y[2 + j] = x86_cvtt_u8(std::round(x[j] * id));  // roundf
}

// Q4_0 (bits 4, offset 8) and Q5_0 (bits 5, offset 16): symmetric, d = max / -offset where max is
// the first value of largest magnitude (+0.0 when every |x| is 0).
template <int kBits>
void quant_sym(const float* x, uint8_t* y) {
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
  put_f16(y, d);
  uint32_t qh = 0;
  uint8_t* qs = y + (kBits == 5 ? 6 : 2);
  for (int j = 0; j < kQK / 2; ++j) {
    // MIN(maxq, (int8_t)(x*id + offset + 0.5)) stored as uint8_t
    const auto q = [&](float v) {
      return static_cast<uint8_t>(std::min<int>(kMaxQ, x86_cvtt_i8(v * id + (kOff + 0.5f))));
    };
    const uint8_t q0 = q(x[j]), q1 = q(x[j + kQK / 2]);
    if constexpr (kBits == 4) {
      qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    } else {
      qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    }
  }
  if constexpr (kBits == 5) std::memcpy(y + 2, &qh, 4);
}

// Q4_1 / Q5_1: affine, x ~ d*q + min.
template <int kBits>
void quant_affine(const float* x, uint8_t* y) {
  constexpr int kMaxQ = (1 << kBits) - 1;
  float mn = std::numeric_limits<float>::max(), mx = -std::numeric_limits<float>::max();
  for (int j = 0; j < kQK; ++j) {
    if (x[j] < mn) mn = x[j];
    if (x[j] > mx) mx = x[j];
  }
  const float d = (mx - mn) / static_cast<float>(kMaxQ);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(y, d);
  put_f16(y + 2, mn);
  uint32_t qh = 0;
  uint8_t* qs = y + (kBits == 5 ? 8 : 4);
  for (int j = 0; j < kQK / 2; ++j) {
    const float v0 = (x[j] - mn) * id + 0.5f, v1 = (x[j + kQK / 2] - mn) * id + 0.5f;
    if constexpr (kBits == 4) {  // MIN(15, (int8_t)v) as uint8_t
      const auto q0 = static_cast<uint8_t>(std::min<int>(15, x86_cvtt_i8(v0)));
      const auto q1 = static_cast<uint8_t>(std::min<int>(15, x86_cvtt_i8(v1)));
      qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    } else {  // (uint8_t)v, no clamp
      const uint8_t q0 = x86_cvtt_u8(v0), q1 = x86_cvtt_u8(v1);
      qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= ((q0 & 0x10u) >> 4) << j;
      qh |= ((q1 & 0x10u) >> 4) << (j + kQK / 2);
    }
  }
  if constexpr (kBits == 5) std::memcpy(y + 4, &qh, 4);
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// 4- or 5-bit code j of a legacy block: low nibble holds j < 16, high nibble j >= 16.
template <int kBits>
int legacy_code(const uint8_t* qs, uint32_t qh, int j) {
  int q = (j < kQK / 2 ? qs[j] : qs[j - kQK / 2] >> 4) & 0xF;
  if constexpr (kBits == 5) q |= static_cast<int>((qh >> j) & 1u) << 4;
  return q;
}

template <int kBits>
void dequant_sym(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  uint32_t qh = 0;
  if constexpr (kBits == 5) std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + (kBits == 5 ? 6 : 2);
  for (int j = 0; j < kQK; ++j)
    y[j] = d * static_cast<float>(legacy_code<kBits>(qs, qh, j) - (1 << (kBits - 1)));
}

template <int kBits>
void dequant_affine(const uint8_t* b, float* y) {
  const float d = get_f16(b);
  const float m = get_f16(b + 2);
  uint32_t qh = 0;
  if constexpr (kBits == 5) std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + (kBits == 5 ? 8 : 4);
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(legacy_code<kBits>(qs, qh, j)) + m;
}

using QuantFn = void (*)(const float*, uint8_t*);
using DequantFn = void (*)(const uint8_t*, float*);

void quant_f32(const float* x, uint8_t* y) {
  std::memcpy(y, x, 4);
}
void quant_f16(const float* x, uint8_t* y) {
  put_f16(y, *x);
}
void quant_bf16(const float* x, uint8_t* y) {
  uint16_t h = f32_to_bf16(*x);
  std::memcpy(y, &h, 2);
}
void dequant_f32(const uint8_t* b, float* y) {
  std::memcpy(y, b, 4);
}
void dequant_f16(const uint8_t* b, float* y) {
  *y = get_f16(b);
}
void dequant_bf16(const uint8_t* b, float* y) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  *y = bf16_to_f32(h);
}

QuantFn quant_fn(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return quant_f32;
    case GgmlType::kF16:
      return quant_f16;
    case GgmlType::kBF16:
      return quant_bf16;
    case GgmlType::kQ8_0:
      return quant_q8_0;
    case GgmlType::kQ4_0:
      return quant_sym<4>;
    case GgmlType::kQ5_0:
      return quant_sym<5>;
    case GgmlType::kQ4_1:
      return quant_affine<4>;
    case GgmlType::kQ5_1:
      return quant_affine<5>;
    case GgmlType::kQ6_K:
      return quant_block_q6_k;
    case GgmlType::kQ4_K:
      return quant_block_q4_k;
    case GgmlType::kQ5_K:
      return quant_block_q5_k;
    default:
      return nullptr;
  }
}

DequantFn dequant_fn(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return dequant_f32;
    case GgmlType::kF16:
      return dequant_f16;
    case GgmlType::kBF16:
      return dequant_bf16;
    case GgmlType::kQ8_0:
      return dequant_q8_0;
    case GgmlType::kQ4_0:
      return dequant_sym<4>;
    case GgmlType::kQ5_0:
      return dequant_sym<5>;
    case GgmlType::kQ4_1:
      return dequant_affine<4>;
    case GgmlType::kQ5_1:
      return dequant_affine<5>;
    case GgmlType::kQ4_K:
      return dequant_block_q4_k;
    case GgmlType::kQ5_K:
      return dequant_block_q5_k;
    case GgmlType::kQ6_K:
      return dequant_block_q6_k;
    default:
      return nullptr;
  }
}

// Below this many blocks threads cost more than they save.
constexpr int64_t kParallelBlocks = 4096;

}  // namespace

bool ggml_can_quantize(GgmlType t) {
  return quant_fn(t) != nullptr;
}
bool ggml_can_dequantize(GgmlType t) {
  return dequant_fn(t) != nullptr;
}

std::vector<uint8_t> quantize_rows(GgmlType t, std::span<const float> x, int64_t n_per_row) {
  const QuantFn fn = quant_fn(t);
  const GgmlTypeTraits& tr = ggml_traits(t);
  if (!fn) fail(ErrorCode::kUnsupported, "quantization to {} is not implemented", tr.name);
  if (n_per_row <= 0 || n_per_row % tr.block_size != 0)
    fail(ErrorCode::kInvalidArgument, "{}: row length {} is not a positive multiple of {}", tr.name,
         n_per_row, tr.block_size);
  if (x.size() % static_cast<uint64_t>(n_per_row) != 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} values are not whole rows of {}", tr.name, x.size(),
         n_per_row);
  const int64_t nb = static_cast<int64_t>(x.size() / tr.block_size);
  std::vector<uint8_t> out(static_cast<size_t>(nb) * tr.type_size);
  const float* src = x.data();
  uint8_t* dst = out.data();
  const int64_t bs = tr.block_size, ts = tr.type_size;
#pragma omp parallel for schedule(static) if (nb >= kParallelBlocks)
  for (int64_t i = 0; i < nb; ++i) fn(src + i * bs, dst + i * ts);
  return out;
}

void dequantize_rows(GgmlType t, std::span<const uint8_t> q, std::span<float> out) {
  const DequantFn fn = dequant_fn(t);
  const GgmlTypeTraits& tr = ggml_traits(t);
  if (!fn) fail(ErrorCode::kUnsupported, "dequantization of {} is not implemented", tr.name);
  if (out.size() % tr.block_size != 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} values are not whole blocks of {}", tr.name,
         out.size(), tr.block_size);
  const int64_t nb = static_cast<int64_t>(out.size() / tr.block_size);
  if (q.size() != static_cast<uint64_t>(nb) * tr.type_size)
    fail(ErrorCode::kInvalidArgument, "{}: {} bytes for {} values, expected {}", tr.name, q.size(),
         out.size(), static_cast<uint64_t>(nb) * tr.type_size);
  const uint8_t* src = q.data();
  float* dst = out.data();
  const int64_t bs = tr.block_size, ts = tr.type_size;
#pragma omp parallel for schedule(static) if (nb >= kParallelBlocks)
  for (int64_t i = 0; i < nb; ++i) fn(src + i * ts, dst + i * bs);
}

}  // namespace nnpipe
