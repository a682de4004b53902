// GGML block weights on the device (F32/F16/BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
// Q6_K): rows dequantized to f32 (embedding lookups, and the weight chunks of a kGgml matmul,
// multiplied by cuBLAS), ggml's activation conversion (the vec_dot type of the weight, expanded
// back to f32: the CPU's sgemm path computes the same products), and a fixed-order row dot
// product for decode rows and the batch-invariant numerics. Block layouts: quant/ggml_blocks.h;
// the half scales are read byte by byte (the blocks are packed).
#include <cstddef>

#include "backend/cuda/common.cuh"
#include "quant/ggml_blocks.h"

namespace nnpipe::cuda {
namespace {

__device__ inline float ld_f16(const uint8_t* p) {
  return f16_bits_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}

// Elements and bytes per block of each type (the element types: one element).
__host__ __device__ inline int block_elems(KType t) {
  return t == KType::kQ4_K || t == KType::kQ5_K || t == KType::kQ6_K ? kQK_K
         : t == KType::kF32 || t == KType::kF16 || t == KType::kBF16 ? 1
                                                                     : kQK;
}
__host__ __device__ inline int block_bytes(KType t) {
  switch (t) {
    case KType::kF32:
      return 4;
    case KType::kF16:
    case KType::kBF16:
      return 2;
    case KType::kQ8_0:
      return sizeof(block_q8_0);
    case KType::kQ4_0:
      return sizeof(block_q4_0);
    case KType::kQ4_1:
      return sizeof(block_q4_1);
    case KType::kQ5_0:
      return sizeof(block_q5_0);
    case KType::kQ5_1:
      return sizeof(block_q5_1);
    case KType::kQ4_K:
      return sizeof(block_q4_K);
    case KType::kQ5_K:
      return sizeof(block_q5_K);
    case KType::kQ6_K:
      return sizeof(block_q6_K);
  }
  return 1;
}

// Q4_K / Q5_K: x = d * sc[s] * q - dmin * m[s] per sub-block s of 32 (qh null for Q4_K).
__device__ void dequant_k45(const uint8_t* b, const uint8_t* scales, const uint8_t* qs,
                            const uint8_t* qh, float* y) {
  const float d = ld_f16(b), dmin = ld_f16(b + 2);
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    scale_min_k4(s, scales, sc, m);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(m);
    const uint8_t* q = qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0xF;
      if (qh) v |= ((qh[l] >> s) & 1) << 4;
      y[32 * s + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// Q4_0/Q4_1/Q5_0/Q5_1: code j < 16 in the low nibble of qs[j], j >= 16 in the high nibble of
// qs[j - 16], the fifth bit (5-bit types) bit j of qh; x = d * (q - offset) or d * q + m.
template <int kBits, bool kAffine>
__device__ void dequant_legacy(const uint8_t* b, const uint8_t* qs, const uint8_t* qhp, float* y) {
  const float d = ld_f16(b);
  float m = 0.0f;
  if constexpr (kAffine) m = ld_f16(b + 2);
  uint32_t qh = 0;
  if constexpr (kBits == 5)
    qh = qhp[0] | (qhp[1] << 8) | (qhp[2] << 16) | (static_cast<uint32_t>(qhp[3]) << 24);
  for (int j = 0; j < kQK; ++j) {
    int q = (j < kQK / 2 ? qs[j] : qs[j - kQK / 2] >> 4) & 0xF;
    if constexpr (kBits == 5) q |= static_cast<int>((qh >> j) & 1u) << 4;
    if constexpr (kAffine)
      y[j] = d * static_cast<float>(q) + m;
    else
      y[j] = d * static_cast<float>(q - (1 << (kBits - 1)));
  }
}

// One block of type t at b into y (block_elems(t) values).
__device__ void dequant_block(KType t, const uint8_t* b, float* y) {
  switch (t) {
    case KType::kF32:
      y[0] = *reinterpret_cast<const float*>(b);
      return;
    case KType::kF16:
      y[0] = ld_f16(b);
      return;
    case KType::kBF16:
      y[0] = bf16_bits_to_f32(static_cast<uint16_t>(b[0] | (b[1] << 8)));
      return;
    case KType::kQ8_0: {
      const float d = ld_f16(b);
      const auto* qs = reinterpret_cast<const int8_t*>(b + offsetof(block_q8_0, qs));
      for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(qs[j]);
      return;
    }
    case KType::kQ4_0:
      return dequant_legacy<4, false>(b, b + offsetof(block_q4_0, qs), nullptr, y);
    case KType::kQ4_1:
      return dequant_legacy<4, true>(b, b + offsetof(block_q4_1, qs), nullptr, y);
    case KType::kQ5_0:
      return dequant_legacy<5, false>(b, b + offsetof(block_q5_0, qs), b + offsetof(block_q5_0, qh),
                                      y);
    case KType::kQ5_1:
      return dequant_legacy<5, true>(b, b + offsetof(block_q5_1, qs), b + offsetof(block_q5_1, qh),
                                     y);
    case KType::kQ4_K:
      return dequant_k45(b, b + offsetof(block_q4_K, scales), b + offsetof(block_q4_K, qs), nullptr,
                         y);
    case KType::kQ5_K:
      return dequant_k45(b, b + offsetof(block_q5_K, scales), b + offsetof(block_q5_K, qs),
                         b + offsetof(block_q5_K, qh), y);
    case KType::kQ6_K: {
      // Element 128*c + 64*h + t takes nibble h of ql[64*c + t] and two bits of qh[32*c + t%32].
      const uint8_t* ql = b + offsetof(block_q6_K, ql);
      const uint8_t* qh = b + offsetof(block_q6_K, qh);
      const auto* sc = reinterpret_cast<const int8_t*>(b + offsetof(block_q6_K, scales));
      const float d = ld_f16(b + offsetof(block_q6_K, d));
      for (int c = 0; c < 2; ++c)
        for (int h = 0; h < 2; ++h)
          for (int t6 = 0; t6 < 64; ++t6) {
            const int e = 128 * c + 64 * h + t6;
            const int lo = (ql[64 * c + t6] >> (4 * h)) & 0xF;
            const int hi = (qh[32 * c + t6 % 32] >> (2 * (2 * h + t6 / 32))) & 3;
            y[e] = (d * static_cast<float>(sc[e / 16])) * static_cast<float>((lo | (hi << 4)) - 32);
          }
      return;
    }
  }
}

__global__ void dequant_rows_k(KType t, const uint8_t* src, int64_t row_bytes, int64_t cols,
                               const int32_t* ids, int64_t vocab, int64_t r0, int64_t rows,
                               float* dst, int* err) {
  const int be = block_elems(t), bb = block_bytes(t);
  const int64_t per_row = cols / be;
  NNPIPE_GRID_LOOP(i, rows * per_row) {
    const int64_t r = i / per_row, blk = i % per_row;
    float* y = dst + r * cols + blk * be;
    int64_t row = r0 + r;
    if (ids) {
      row = ids[r];
      if (row < 0 || row >= vocab) {
        atomicOr(err, kErrEmbeddingId);
        for (int j = 0; j < be; ++j) y[j] = 0.0f;
        continue;
      }
    }
    dequant_block(t, src + row * row_bytes + blk * bb, y);
  }
}

// ggml-cpu's quantize_row_q8_0 (x86 AVX2 branch): id = 127 / amax, half-to-even rounding,
// saturating to int8; the expanded value is f16(d) * q.
__device__ void round_q8_0(const float* x, float* y) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = fmaxf(amax, fabsf(x[j]));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const float dh = round_f16(d);
  for (int j = 0; j < kQK; ++j) {
    float v = rintf(x[j] * id);
    v = fminf(fmaxf(v, -128.0f), 127.0f);
    y[j] = dh * v;
  }
}

// ggml's quantize_row_q8_K_ref: the scale from the first element of largest magnitude (with its
// sign), iscale = -127 / max, nearest even, capped at 127; the expanded value is (1 / iscale) * q.
__device__ void round_q8_K(const float* x, float* y) {
  float max = 0.0f, amax = 0.0f;
  for (int j = 0; j < kQK_K; ++j) {
    const float ax = fabsf(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  if (amax == 0.0f) {
    for (int j = 0; j < kQK_K; ++j) y[j] = 0.0f;
    return;
  }
  const float iscale = -127.0f / max;
  const float d = 1.0f / iscale;
  for (int j = 0; j < kQK_K; ++j) y[j] = d * fminf(rintf(iscale * x[j]), 127.0f);
}

__global__ void round_act_k(KType t, const float* x, float* out, int64_t rows, int64_t cols) {
  // Q8_1 (for Q4_1/Q5_1) quantizes as Q8_0; its extra f16 block sum s, which ggml multiplies by
  // the weight's min, is not modelled: a relative 2^-11 of the min term.
  const bool q8_0 = t == KType::kQ8_0 || t == KType::kQ4_0 || t == KType::kQ5_0 ||
                    t == KType::kQ4_1 || t == KType::kQ5_1;
  const bool q8_k = t == KType::kQ4_K || t == KType::kQ5_K || t == KType::kQ6_K;
  const int be = q8_0 ? kQK : q8_k ? kQK_K : 1;
  const int64_t per_row = cols / be;
  NNPIPE_GRID_LOOP(i, rows * per_row) {
    const int64_t off = (i / per_row) * cols + (i % per_row) * be;
    if (q8_0)
      round_q8_0(x + off, out + off);
    else if (q8_k)
      round_q8_K(x + off, out + off);
    else if (t == KType::kF16)
      out[off] = round_f16(x[off]);
    else if (t == KType::kBF16)
      out[off] = round_bf16(x[off]);
    else
      out[off] = x[off];
  }
}

// One warp per output: lane-strided partial sums, then the xor butterfly (a fixed order).
__global__ void rowdot_k(const float* x, const float* w, float* y, int64_t n, int64_t o, int64_t k,
                         int64_t ldy) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= n * o) return;
  const int64_t r = warp / o, c = warp % o;
  const float* xr = x + r * k;
  const float* wc = w + c * k;
  float s = 0;
  for (int64_t i = lane; i < k; i += 32) s += xr[i] * wc[i];
  s = warp_sum(s);
  if (lane == 0) y[r * ldy + c] = s;
}

}  // namespace

void dequant_rows(cudaStream_t s, KType t, const uint8_t* src, int64_t row_bytes, int64_t cols,
                  const int32_t* ids, int64_t vocab, int64_t r0, int64_t rows, float* dst,
                  int* err) {
  const int64_t work = rows * (cols / block_elems(t));
  if (work <= 0) return;
  // K-quant blocks are 256 values per thread: smaller blocks keep more of them in flight.
  const int threads = block_elems(t) > 1 ? 64 : kThreads;
  dequant_rows_k<<<blocks_for(work, threads), threads, 0, s>>>(t, src, row_bytes, cols, ids, vocab,
                                                               r0, rows, dst, err);
  NNPIPE_CUDA_LAUNCHED("dequant_rows_k");
}

void round_activations(cudaStream_t s, KType t, const float* x, float* out, int64_t rows,
                       int64_t cols) {
  if (rows * cols <= 0) return;
  round_act_k<<<blocks_for(rows * cols, 64), 64, 0, s>>>(t, x, out, rows, cols);
  NNPIPE_CUDA_LAUNCHED("round_act_k");
}

void rowdot(cudaStream_t s, const float* x, const float* w, float* y, int64_t n, int64_t o,
            int64_t k, int64_t ldy) {
  const int64_t threads = n * o * 32;
  if (threads <= 0) return;
  rowdot_k<<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      x, w, y, n, o, k, ldy);
  NNPIPE_CUDA_LAUNCHED("rowdot_k");
}

}  // namespace nnpipe::cuda
