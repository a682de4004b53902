// Portable qmatmul kernels (CPUs without AVX2): ggml's generic ggml_vec_dot_* semantics, i.e.
// exact integer sums per block scaled and accumulated into one f32 sum per row and token. Block
// layouts: ggml-common.h (see qmatmul_act.cpp for the activation blocks).
#include <array>
#include <cstring>

#include "backend/cpu/qmatmul_kernels.h"
#include "core/half.h"

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

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_table()[h];
}
inline const int8_t* i8(const uint8_t* p) {
  return reinterpret_cast<const int8_t*>(p);
}
inline uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q8_0 weights {f16 d; i8 qs[32]} . Q8_0 activations.
void dot_q8_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 32;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 34;
      const uint8_t* yb = y + ib * 34;
      int sumi = 0;
      for (int j = 0; j < 32; ++j) sumi += i8(x + 2)[j] * i8(yb + 2)[j];
      sumf += static_cast<float>(sumi) * (f16(x) * f16(yb));
    }
    out[t] = sumf;
  }
}

// Q4_0 {f16 d; u8 qs[16]}: value j = (qs[j] & 15) - 8, value j + 16 = (qs[j] >> 4) - 8.
void dot_q4_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 32;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 18;
      const int8_t* q8 = i8(y + ib * 34 + 2);
      int sumi = 0;
      for (int j = 0; j < 16; ++j)
        sumi += ((x[2 + j] & 15) - 8) * q8[j] + ((x[2 + j] >> 4) - 8) * q8[j + 16];
      sumf += static_cast<float>(sumi) * f16(x) * f16(y + ib * 34);
    }
    out[t] = sumf;
  }
}

// Q5_0 {f16 d; u32 qh; u8 qs[16]}: the 5th bit of value j is bit j of qh.
void dot_q5_0(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 32;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 22;
      const uint32_t qh = u32(x + 2);
      const uint8_t* qs = x + 6;
      const int8_t* q8 = i8(y + ib * 34 + 2);
      int sumi = 0;
      for (int j = 0; j < 16; ++j) {
        const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        sumi += (((qs[j] & 15) | h0) - 16) * q8[j] + (((qs[j] >> 4) | h1) - 16) * q8[j + 16];
      }
      sumf += (f16(x) * f16(y + ib * 34)) * static_cast<float>(sumi);
    }
    out[t] = sumf;
  }
}

// Q4_1 {f16 d, m; u8 qs[16]} . Q8_1 {f16 d, s; i8 qs[32]}: d*d8*sum(q*q8) + m*s.
void dot_q4_1(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 32;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 20;
      const uint8_t* yb = y + ib * 36;
      const int8_t* q8 = i8(yb + 4);
      int sumi = 0;
      for (int j = 0; j < 16; ++j) sumi += (x[4 + j] & 15) * q8[j] + (x[4 + j] >> 4) * q8[j + 16];
      sumf += (f16(x) * f16(yb)) * static_cast<float>(sumi) + f16(x + 2) * f16(yb + 2);
    }
    out[t] = sumf;
  }
}

// Q5_1 {f16 d, m; u32 qh; u8 qs[16]}.
void dot_q5_1(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 32;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 24;
      const uint8_t* yb = y + ib * 36;
      const uint32_t qh = u32(x + 4);
      const uint8_t* qs = x + 8;
      const int8_t* q8 = i8(yb + 4);
      int sumi = 0;
      for (int j = 0; j < 16; ++j) {
        const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        sumi += ((qs[j] & 15) | h0) * q8[j] + ((qs[j] >> 4) | h1) * q8[j + 16];
      }
      sumf += (f16(x) * f16(yb)) * static_cast<float>(sumi) + f16(x + 2) * f16(yb + 2);
    }
    out[t] = sumf;
  }
}

// The 6-bit scales and mins of Q4_K/Q5_K (ggml's get_scale_min_k4), sub-block j of 8.
inline void scale_min_k4(int j, const uint8_t* q, int& d, int& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q8_K {f32 d; i8 qs[256]; i16 bsums[16]}.
inline float q8k_d(const uint8_t* y) {
  float d;
  std::memcpy(&d, y, 4);
  return d;
}
inline int q8k_bsum(const uint8_t* y, int j) {
  int16_t v;
  std::memcpy(&v, y + 260 + 2 * j, 2);
  return v;
}

// Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}; Q5_K adds u8 qh[32] before qs. Chunk c of 64
// values: low nibbles of qs[32c..32c+32) (sub-block 2c), then the high nibbles (2c+1); Q5_K's
// 5th bits are bits 2c and 2c+1 of qh[l].
template <bool kQ5>
void dot_qk45(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  constexpr size_t kBs = kQ5 ? 176 : 144;
  const int64_t nb = cols / 256;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * kBs;
      const uint8_t* yb = y + ib * 292;
      const uint8_t* qh = x + 16;
      const uint8_t* qs = x + (kQ5 ? 48 : 16);
      const int8_t* q8 = i8(yb + 4);
      int sumi = 0, summ = 0;
      for (int c = 0; c < 4; ++c) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * c, x + 4, sc0, m0);
        scale_min_k4(2 * c + 1, x + 4, sc1, m1);
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 32; ++l) {
          int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
          if (kQ5) {
            lo |= ((qh[l] >> (2 * c)) & 1) << 4;
            hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
          }
          s0 += lo * q8[64 * c + l];
          s1 += hi * q8[64 * c + 32 + l];
        }
        sumi += sc0 * s0 + sc1 * s1;
        summ += m0 * (q8k_bsum(yb, 4 * c) + q8k_bsum(yb, 4 * c + 1)) +
                m1 * (q8k_bsum(yb, 4 * c + 2) + q8k_bsum(yb, 4 * c + 3));
      }
      const float d8 = q8k_d(yb);
      sumf += d8 * f16(x) * static_cast<float>(sumi) - d8 * f16(x + 2) * static_cast<float>(summ);
    }
    out[t] = sumf;
  }
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: per half n (128 values), l < 32:
// q(l) = (ql[l] & 15 | (qh[l] & 3) << 4) - 32, q(l+32) from ql[l+32] and qh bits 2-3, q(l+64)
// from ql[l] >> 4 and bits 4-5, q(l+96) from ql[l+32] >> 4 and bits 6-7; scale of value i: i / 16.
void dot_q6_K(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, int nt, float* out) {
  const int64_t nb = cols / 256;
  for (int t = 0; t < nt; ++t) {
    const uint8_t* y = a + t * as;
    float sumf = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* x = w + ib * 210;
      const uint8_t* yb = y + ib * 292;
      const int8_t* sc = i8(x + 192);
      const int8_t* q8 = i8(yb + 4);
      int sumi = 0;
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = x + 64 * n;
        const uint8_t* qh = x + 128 + 32 * n;
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
      sumf += q8k_d(yb) * f16(x + 208) * static_cast<float>(sumi);
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

DotFn scalar_dot(GgmlType weight) {
  switch (weight) {
    case GgmlType::kF32:
      return dot_f32;
    case GgmlType::kF16:
      return dot_f16;
    case GgmlType::kBF16:
      return dot_bf16;
    case GgmlType::kQ8_0:
      return dot_q8_0;
    case GgmlType::kQ4_0:
      return dot_q4_0;
    case GgmlType::kQ5_0:
      return dot_q5_0;
    case GgmlType::kQ4_1:
      return dot_q4_1;
    case GgmlType::kQ5_1:
      return dot_q5_1;
    case GgmlType::kQ4_K:
      return dot_qk45<false>;
    case GgmlType::kQ5_K:
      return dot_qk45<true>;
    case GgmlType::kQ6_K:
      return dot_q6_K;
    default:
      return nullptr;
  }
}

}  // namespace nnpipe::cpu::qk
