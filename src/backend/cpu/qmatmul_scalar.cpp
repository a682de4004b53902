// Portable qmatmul kernels (CPUs without AVX2): ggml's generic ggml_vec_dot_* semantics, i.e.
// exact integer sums per block scaled and accumulated into one f32 sum per row and token. Block
// layouts: quant/ggml_blocks.h.
#include <array>
#include <cstring>
#include <type_traits>

#include "backend/cpu/qmatmul_kernels.h"
#include "core/half.h"
#include "quant/ggml_blocks.h"

namespace nnpipe::cpu::qk {

namespace {

// fp16 -> f32 by table, as ggml does without F16C.
const float* f16_table() {
  static const std::array<float, 65536>* table = [] {
    auto* t = new std::array<float, 65536>;
    for (uint32_t i = 0; i < 65536; ++i) (*t)[i] = f16_to_f32(static_cast<uint16_t>(i));
    return t;
  }();
  return table->data();
}

inline float f16(uint16_t h) {
  return f16_table()[h];
}

// Activation row t of a kernel call, as blocks.
template <typename Block>
inline const Block* act_row(const uint8_t* a, size_t as, int t) {
  return reinterpret_cast<const Block*>(a + t * as);
}

// Q8_0 weights . Q8_0 activations.
void dot_q8_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q8_0*>(w);
  const int64_t nb = cols / kQK;
  for (int t = 0; t < nt; ++t) {
    const block_q8_0* y = act_row<block_q8_0>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      int sumi = 0;
      for (int j = 0; j < kQK; ++j) sumi += x[ib].qs[j] * y[ib].qs[j];
      sumf += static_cast<float>(sumi) * (f16(x[ib].d) * f16(y[ib].d));
    }
    out[t] = sumf;
  }
}

// Q4_0: value j = (qs[j] & 15) - 8, value j + 16 = (qs[j] >> 4) - 8.
void dot_q4_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q4_0*>(w);
  const int64_t nb = cols / kQK;
  for (int t = 0; t < nt; ++t) {
    const block_q8_0* y = act_row<block_q8_0>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* qs = x[ib].qs;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0;
      for (int j = 0; j < kQK / 2; ++j)
        sumi += ((qs[j] & 15) - 8) * q8[j] + ((qs[j] >> 4) - 8) * q8[j + kQK / 2];
      sumf += static_cast<float>(sumi) * f16(x[ib].d) * f16(y[ib].d);
    }
    out[t] = sumf;
  }
}

// Q5_0: the 5th bit of value j is bit j of qh.
void dot_q5_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q5_0*>(w);
  const int64_t nb = cols / kQK;
  for (int t = 0; t < nt; ++t) {
    const block_q8_0* y = act_row<block_q8_0>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint32_t qh = x[ib].qh;
      const uint8_t* qs = x[ib].qs;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0;
      for (int j = 0; j < kQK / 2; ++j) {
        const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        sumi += (((qs[j] & 15) | h0) - 16) * q8[j] + (((qs[j] >> 4) | h1) - 16) * q8[j + kQK / 2];
      }
      sumf += (f16(x[ib].d) * f16(y[ib].d)) * static_cast<float>(sumi);
    }
    out[t] = sumf;
  }
}

// Q4_1 . Q8_1: d*d8*sum(q*q8) + m*s.
void dot_q4_1(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q4_1*>(w);
  const int64_t nb = cols / kQK;
  for (int t = 0; t < nt; ++t) {
    const block_q8_1* y = act_row<block_q8_1>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* qs = x[ib].qs;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0;
      for (int j = 0; j < kQK / 2; ++j) sumi += (qs[j] & 15) * q8[j] + (qs[j] >> 4) * q8[j + 16];
      sumf +=
          (f16(x[ib].d) * f16(y[ib].d)) * static_cast<float>(sumi) + f16(x[ib].m) * f16(y[ib].s);
    }
    out[t] = sumf;
  }
}

// Q5_1 . Q8_1.
void dot_q5_1(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q5_1*>(w);
  const int64_t nb = cols / kQK;
  for (int t = 0; t < nt; ++t) {
    const block_q8_1* y = act_row<block_q8_1>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint32_t qh = x[ib].qh;
      const uint8_t* qs = x[ib].qs;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0;
      for (int j = 0; j < kQK / 2; ++j) {
        const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        sumi += ((qs[j] & 15) | h0) * q8[j] + ((qs[j] >> 4) | h1) * q8[j + 16];
      }
      sumf +=
          (f16(x[ib].d) * f16(y[ib].d)) * static_cast<float>(sumi) + f16(x[ib].m) * f16(y[ib].s);
    }
    out[t] = sumf;
  }
}

// Q4_K / Q5_K . Q8_K. Chunk c of 64 values: low nibbles of qs[32c..32c+32) (sub-block 2c), then
// the high nibbles (2c+1); Q5_K's 5th bits are bits 2c and 2c+1 of qh[l].
template <typename Block>
void dot_qk45(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  constexpr bool kQ5 = std::is_same_v<Block, block_q5_K>;
  const auto* x = reinterpret_cast<const Block*>(w);
  const int64_t nb = cols / kQK_K;
  for (int t = 0; t < nt; ++t) {
    const block_q8_K* y = act_row<block_q8_K>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* qs = x[ib].qs;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0, summ = 0;
      for (int c = 0; c < 4; ++c) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * c, x[ib].scales, sc0, m0);
        scale_min_k4(2 * c + 1, x[ib].scales, sc1, m1);
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 32; ++l) {
          int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
          if constexpr (kQ5) {
            lo |= ((x[ib].qh[l] >> (2 * c)) & 1) << 4;
            hi |= ((x[ib].qh[l] >> (2 * c + 1)) & 1) << 4;
          }
          s0 += lo * q8[64 * c + l];
          s1 += hi * q8[64 * c + 32 + l];
        }
        sumi += sc0 * s0 + sc1 * s1;
        summ += m0 * (y[ib].bsums[4 * c] + y[ib].bsums[4 * c + 1]) +
                m1 * (y[ib].bsums[4 * c + 2] + y[ib].bsums[4 * c + 3]);
      }
      const float d8 = y[ib].d;
      sumf += d8 * f16(x[ib].d) * static_cast<float>(sumi) -
              d8 * f16(x[ib].dmin) * static_cast<float>(summ);
    }
    out[t] = sumf;
  }
}

// Q6_K . Q8_K: per half n (128 values), l < 32: q(l) = (ql[l] & 15 | (qh[l] & 3) << 4) - 32,
// q(l+32) from ql[l+32] and qh bits 2-3, q(l+64) from ql[l] >> 4 and bits 4-5, q(l+96) from
// ql[l+32] >> 4 and bits 6-7; scale of value i: i / 16.
void dot_q6_K(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const auto* x = reinterpret_cast<const block_q6_K*>(w);
  const int64_t nb = cols / kQK_K;
  for (int t = 0; t < nt; ++t) {
    const block_q8_K* y = act_row<block_q8_K>(a, as, t);
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const int8_t* sc = x[ib].scales;
      const int8_t* q8 = y[ib].qs;
      int sumi = 0;
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = x[ib].ql + 64 * n;
        const uint8_t* qh = x[ib].qh + 32 * n;
        int s[8] = {};
        for (int l = 0; l < 32; ++l) {
          const int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          const int8_t* q = q8 + 128 * n;
          const int is = l / 16;
          s[is] += q1 * q[l];
          s[is + 2] += q2 * q[l + 32];
          s[is + 4] += q3 * q[l + 64];
          s[is + 6] += q4 * q[l + 96];
        }
        for (int k = 0; k < 8; ++k) sumi += sc[8 * n + k] * s[k];
      }
      sumf += y[ib].d * f16(x[ib].d) * static_cast<float>(sumi);
    }
    out[t] = sumf;
  }
}

// F16 weights . f16-rounded activations (stored as f32): the products are exact in f32.
void dot_f16(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const float* tab = f16_table();
  for (int t = 0; t < nt; ++t) {
    const float* y = reinterpret_cast<const float*>(a + t * as);
    float sumf = 0;
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t h;
      std::memcpy(&h, w + 2 * i, 2);
      sumf += tab[h] * y[i];
    }
    out[t] = sumf;
  }
}

void dot_bf16(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  for (int t = 0; t < nt; ++t) {
    const float* y = reinterpret_cast<const float*>(a + t * as);
    float sumf = 0;
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t h;
      std::memcpy(&h, w + 2 * i, 2);
      sumf += bf16_to_f32(h) * y[i];
    }
    out[t] = sumf;
  }
}

void dot_f32(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const float* x = reinterpret_cast<const float*>(w);
  for (int t = 0; t < nt; ++t) {
    const float* y = reinterpret_cast<const float*>(a + t * as);
    float sumf = 0;
    for (int64_t i = 0; i < cols; ++i) sumf += x[i] * y[i];
    out[t] = sumf;
  }
}

}  // namespace

DotFn scalar_dot(DType weight) {
  switch (weight) {
    case DType::kF32:
      return dot_f32;
    case DType::kF16:
      return dot_f16;
    case DType::kBF16:
      return dot_bf16;
    case DType::kQ8_0:
      return dot_q8_0;
    case DType::kQ4_0:
      return dot_q4_0;
    case DType::kQ5_0:
      return dot_q5_0;
    case DType::kQ4_1:
      return dot_q4_1;
    case DType::kQ5_1:
      return dot_q5_1;
    case DType::kQ4_K:
      return dot_qk45<block_q4_K>;
    case DType::kQ5_K:
      return dot_qk45<block_q5_K>;
    case DType::kQ6_K:
      return dot_q6_K;
    default:
      return nullptr;
  }
}

}  // namespace nnpipe::cpu::qk
