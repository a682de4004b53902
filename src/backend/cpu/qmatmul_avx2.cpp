// AVX2 + FMA + F16C qmatmul kernels, chosen at run time (qk::cpu_has_avx2). Each one follows the
// AVX2 branch of ggml's ggml_vec_dot_<type>_<vec_dot type> (ggml-cpu/arch/x86/quants.c, MIT) lane
// for lane, per token: the same integer block sums, the same f32 fmadd into 8 lane accumulators
// and the same horizontal sum, so a result equals ggml's vec_dot bit for bit. The weight block is
// unpacked once and reused for up to kMaxTokens activation rows.
//
// The functions of this file are compiled for AVX2 (core/avx2_begin.h after the includes), and it
// instantiates no inline function or template of a shared header that the rest of the program
// could pick up: the binary still runs on CPUs without AVX2. The 4-row decode kernels and the
// F16 one are not ggml's lane order where noted.
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/qmatmul_kernels.h"

#include "core/avx2_begin.h"  // the AVX2 functions start here

namespace nnpipe::cpu::qk {

namespace {

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline __m256i load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// ggml's hsum_float_8.
inline float hsum_float_8(__m256 x) {
  __m128 res = _mm256_extractf128_ps(x, 1);
  res = _mm_add_ps(res, _mm256_castps256_ps128(x));
  res = _mm_add_ps(res, _mm_movehl_ps(res, res));
  res = _mm_add_ss(res, _mm_movehdup_ps(res));
  return _mm_cvtss_f32(res);
}

// 32 nibbles -> 32 bytes: low nibbles of 16 bytes, then the high ones.
inline __m256i bytes_from_nibbles_32(const uint8_t* p) {
  const __m128i tmp = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
  return _mm256_and_si256(_mm256_set1_epi8(0xF), bytes);
}

// 32 bits -> 32 bytes of 0x00 / 0xFF.
inline __m256i bytes_from_bits_32(const uint8_t* x) {
  uint32_t x32;
  std::memcpy(&x32, x, 4);
  const __m256i shuf_mask = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                              0x0101010101010101, 0x0000000000000000);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(x32)), shuf_mask);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// Unsigned x signed bytes, summed in fours to i32, as f32 (mul_sum_us8_pairs_float).
inline __m256 mul_sum_us8_pairs_float(__m256i ax, __m256i sy) {
  const __m256i dot = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot));
}

// ---- Q8_0 / Q4_0 / Q5_0 weights . Q8_0 activations -------------------------------------------

// The signed weight bytes of block ib (32 values in [-128, 127]).
enum class Q8Src { kQ8_0, kQ4_0, kQ5_0 };

template <Q8Src kSrc>
inline __m256i signed_block(const uint8_t* x) {
  if constexpr (kSrc == Q8Src::kQ8_0) {
    return load(x + 2);
  } else if constexpr (kSrc == Q8Src::kQ4_0) {
    return _mm256_sub_epi8(bytes_from_nibbles_32(x + 2), _mm256_set1_epi8(8));
  } else {
    __m256i qx = bytes_from_nibbles_32(x + 6);
    __m256i bxhi = bytes_from_bits_32(x + 2);
    bxhi = _mm256_andnot_si256(bxhi, _mm256_set1_epi8(static_cast<char>(0xF0)));
    return _mm256_or_si256(qx, bxhi);
  }
}

template <Q8Src kSrc, int NT>
void dot_q8(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  constexpr size_t kBs = kSrc == Q8Src::kQ8_0 ? 34 : (kSrc == Q8Src::kQ4_0 ? 18 : 22);
  const int64_t nb = cols / 32;
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* x = w + ib * kBs;
    const float dx = f16(x);
    const __m256i qx = signed_block<kSrc>(x);
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    for (int t = 0; t < NT; ++t) {
      const uint8_t* y = a + t * as + ib * 34;
      const __m256 d = _mm256_set1_ps(dx * f16(y));
      const __m256i sy = _mm256_sign_epi8(load(y + 2), qx);
      const __m256 q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)));
      acc[t] = _mm256_fmadd_ps(d, q, acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_float_8(acc[t]);
}

// NR rows x one token. Q4_0 skips ggml's sign trick: with the unsigned nibbles q in [0, 15],
// sum (q - 8) y = maddubs(q, y) summed in fours - 8 * (y summed in fours), the same i32 per lane
// as ggml's (no i16 saturation: |q y| pairs <= 3840), then the same f32 fmadd per block.
template <Q8Src kSrc, int NR>
void dot_q8_rows(int64_t cols, const uint8_t* w, size_t rs, const uint8_t* a, float* out) {
  constexpr size_t kBs = kSrc == Q8Src::kQ8_0 ? 34 : (kSrc == Q8Src::kQ4_0 ? 18 : 22);
  const int64_t nb = cols / 32;
  __m256 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  // The NR rows are one contiguous span read as NR interleaved streams, which the hardware
  // prefetchers follow poorly: prefetch the next group's span, spread over this group's blocks.
  const char* pf = reinterpret_cast<const char*>(w + NR * rs);
  const size_t pf_step = (NR * rs + static_cast<size_t>(nb) - 1) / static_cast<size_t>(nb);
  for (int64_t ib = 0; ib < nb; ++ib) {
    _mm_prefetch(pf + ib * pf_step, _MM_HINT_T0);
    _mm_prefetch(pf + ib * pf_step + 64, _MM_HINT_T0);
    const uint8_t* y = a + ib * 34;
    const float dy = f16(y);
    const __m256i qy = load(y + 2);
    __m256i y8;
    if constexpr (kSrc == Q8Src::kQ4_0)
      y8 = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(_mm256_set1_epi8(8), qy));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* x = w + r * rs + ib * kBs;
      const __m256 d = _mm256_set1_ps(f16(x) * dy);
      __m256i q;
      if constexpr (kSrc == Q8Src::kQ4_0) {
        q = _mm256_sub_epi32(
            _mm256_madd_epi16(ones, _mm256_maddubs_epi16(bytes_from_nibbles_32(x + 2), qy)), y8);
      } else {
        const __m256i qx = signed_block<kSrc>(x);
        q = _mm256_madd_epi16(
            ones, _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx)));
      }
      acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), acc[r]);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = hsum_float_8(acc[r]);
}

// ---- Q4_1 / Q5_1 weights . Q8_1 activations -------------------------------------------------

template <bool kQ5, int NT>
void dot_q8_1(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  constexpr size_t kBs = kQ5 ? 24 : 20;
  const int64_t nb = cols / 32;
  __m256 acc[NT];
  float summs[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    summs[t] = 0.0f;
  }
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* x = w + ib * kBs;
    const float dx = f16(x), mx = f16(x + 2);
    __m256i qx;
    if constexpr (kQ5) {
      qx = bytes_from_nibbles_32(x + 8);
      const __m256i bxhi = _mm256_and_si256(bytes_from_bits_32(x + 4), _mm256_set1_epi8(0x10));
      qx = _mm256_or_si256(qx, bxhi);
    } else {
      qx = bytes_from_nibbles_32(x + 4);
    }
    for (int t = 0; t < NT; ++t) {
      const uint8_t* y = a + t * as + ib * 36;
      const float dy = f16(y);
      summs[t] += mx * f16(y + 2);
      const __m256 q = mul_sum_us8_pairs_float(qx, load(y + 4));
      if constexpr (kQ5) {  // ggml: fmadd(q, dx * dy, acc)
        acc[t] = _mm256_fmadd_ps(q, _mm256_mul_ps(_mm256_set1_ps(dx), _mm256_set1_ps(dy)), acc[t]);
      } else {  // ggml: fmadd(dx * dy, q, acc)
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(dx), _mm256_set1_ps(dy)), q, acc[t]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_float_8(acc[t]) + summs[t];
}

// ---- K-quants . Q8_K activations ------------------------------------------------------------

// Byte pairs (2i, 2i+1) repeated 16 times in row i: the 16-bit scale i in every lane.
alignas(32) const uint8_t kShuffleK4[256] = {
#define NNPIPE_R(i) 2 * i, 2 * i + 1
#define NNPIPE_ROW(i)                                                                            \
  NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i),     \
      NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), NNPIPE_R(i), \
      NNPIPE_R(i), NNPIPE_R(i)
    NNPIPE_ROW(0), NNPIPE_ROW(1), NNPIPE_ROW(2), NNPIPE_ROW(3),
    NNPIPE_ROW(4), NNPIPE_ROW(5), NNPIPE_ROW(6), NNPIPE_ROW(7),
#undef NNPIPE_ROW
#undef NNPIPE_R
};
alignas(16) const uint8_t kShuffle6[128] = {
    0,  0,  0,  0,  0,  0,  0,  0,  1,  1,  1,  1,  1,  1,  1,  1,  2,  2,  2,  2,  2,  2,
    2,  2,  3,  3,  3,  3,  3,  3,  3,  3,  4,  4,  4,  4,  4,  4,  4,  4,  5,  5,  5,  5,
    5,  5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  6,  7,  7,  7,  7,  7,  7,  7,  7,  8,  8,
    8,  8,  8,  8,  8,  8,  9,  9,  9,  9,  9,  9,  9,  9,  10, 10, 10, 10, 10, 10, 10, 10,
    11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13,
    13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15};

inline __m256i shuffle_k4(int i) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(kShuffleK4) + i);
}
inline __m128i shuffle_6(int i) {
  return _mm_load_si128(reinterpret_cast<const __m128i*>(kShuffle6) + i);
}

inline float q8k_d(const uint8_t* y) {
  float d;
  std::memcpy(&d, y, 4);
  return d;
}

// Q4_K/Q5_K's 8 scales (bytes 0..7 of the result) and 8 mins (8..15), as ggml unpacks them.
inline void unpack_scales_k4(const uint8_t* scales, uint32_t utmp[4]) {
  constexpr uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
  std::memcpy(utmp, scales, 12);
  utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
  const uint32_t uaux = utmp[1] & kmask1;
  utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
  utmp[2] = uaux;
  utmp[0] &= kmask1;
}

// Q4_K {f16 d, dmin; scales[12]; qs[128]}: ggml_vec_dot_q4_K_q8_K.
template <int NT>
void dot_q4_K(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  const int64_t nb = cols / 256;
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc[NT];
  __m128 acc_m[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_m[t] = _mm_setzero_ps();
  }
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* x = w + i * 144;
    const float xd = f16(x), xdmin = f16(x + 2);
    uint32_t utmp[4];
    unpack_scales_k4(x + 4, utmp);
    const __m256i mins_and_scales =
        _mm256_cvtepu8_epi16(_mm_set_epi32(static_cast<int>(utmp[3]), static_cast<int>(utmp[2]),
                                           static_cast<int>(utmp[1]), static_cast<int>(utmp[0])));
    const __m128i mins = _mm256_extracti128_si256(mins_and_scales, 1);
    const __m128i sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
    const __m256i scales = _mm256_set_m128i(sc128, sc128);
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) {
      const uint8_t* y = a + t * as + i * 292;
      const float yd = q8k_d(y);
      const float dmin = -yd * xdmin;
      const __m256i q8sums = load(y + 260);
      const __m128i q8s =
          _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
      const __m128i prod = _mm_madd_epi16(mins, q8s);
      acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[t]);
      sumi[t] = _mm256_setzero_si256();
    }
    const uint8_t* q4 = x + 16;
    for (int j = 0; j < 4; ++j) {
      const __m256i scale_l = _mm256_shuffle_epi8(scales, shuffle_k4(2 * j + 0));
      const __m256i scale_h = _mm256_shuffle_epi8(scales, shuffle_k4(2 * j + 1));
      const __m256i q4bits = load(q4 + 32 * j);
      const __m256i q4l = _mm256_and_si256(q4bits, m4);
      const __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
      for (int t = 0; t < NT; ++t) {
        const uint8_t* q8 = a + t * as + i * 292 + 4 + 64 * j;
        const __m256i p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, load(q8)));
        const __m256i p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, load(q8 + 32)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p16l, p16h));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const float d = q8k_d(a + t * as + i * 292) * xd;
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m128 m = acc_m[t];
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    out[t] = hsum_float_8(acc[t]) + _mm_cvtss_f32(m);
  }
}

// Q5_K {f16 d, dmin; scales[12]; qh[32]; qs[128]}: ggml_vec_dot_q5_K_q8_K.
template <int NT>
void dot_q5_K(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  const int64_t nb = cols / 256;
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m128i mzero = _mm_setzero_si128();
  const __m256i mone = _mm256_set1_epi8(1);
  __m256 acc[NT];
  float summs[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    summs[t] = 0.0f;
  }
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* x = w + i * 176;
    const float xd = f16(x), xdmin = f16(x + 2);
    uint32_t utmp[4];
    unpack_scales_k4(x + 4, utmp);
    const __m256i mins_and_scales =
        _mm256_cvtepu8_epi16(_mm_set_epi32(static_cast<int>(utmp[3]), static_cast<int>(utmp[2]),
                                           static_cast<int>(utmp[1]), static_cast<int>(utmp[0])));
    const __m128i mins = _mm256_extracti128_si256(mins_and_scales, 1);
    const __m128i sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
    const __m256i scales = _mm256_set_m128i(sc128, sc128);
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) {
      const uint8_t* y = a + t * as + i * 292;
      const float dmin = -q8k_d(y) * xdmin;
      const __m256i q8sums = load(y + 260);
      const __m128i q8s =
          _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
      const __m128i prod = _mm_madd_epi16(mins, q8s);
      const __m128i hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);
      summs[t] += dmin * static_cast<float>(_mm_extract_epi32(hsum, 0));
      sumi[t] = _mm256_setzero_si256();
    }
    const uint8_t* q5 = x + 48;
    const __m256i hbits = load(x + 16);
    __m256i hmask = mone;
    int bit = 0;
    for (int j = 0; j < 4; ++j) {
      const __m256i scale_0 = _mm256_shuffle_epi8(scales, shuffle_k4(2 * j + 0));
      const __m256i scale_1 = _mm256_shuffle_epi8(scales, shuffle_k4(2 * j + 1));
      const __m256i q5bits = load(q5 + 32 * j);
      const __m256i q5l_0 = _mm256_and_si256(q5bits, m4);
      const __m256i q5h_0 =
          _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit++), 4);
      const __m256i q5_0 = _mm256_add_epi8(q5l_0, q5h_0);
      hmask = _mm256_slli_epi16(hmask, 1);
      const __m256i q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
      const __m256i q5h_1 =
          _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit++), 4);
      const __m256i q5_1 = _mm256_add_epi8(q5l_1, q5h_1);
      hmask = _mm256_slli_epi16(hmask, 1);
      for (int t = 0; t < NT; ++t) {
        const uint8_t* q8 = a + t * as + i * 292 + 4 + 64 * j;
        const __m256i p16_0 = _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q5_0, load(q8)));
        const __m256i p16_1 = _mm256_madd_epi16(scale_1, _mm256_maddubs_epi16(q5_1, load(q8 + 32)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p16_0, p16_1));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const float d = q8k_d(a + t * as + i * 292) * xd;
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_float_8(acc[t]) + summs[t];
}

// Q6_K {ql[128]; qh[64]; i8 scales[16]; f16 d}: ggml_vec_dot_q6_K_q8_K.
template <int NT>
void dot_q6_K(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  const int64_t nb = cols / 256;
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i m15 = _mm256_set1_epi8(15);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* x = w + i * 210;
    const float xd = f16(x + 208);
    const uint8_t* q4 = x;
    const uint8_t* qh = x + 128;
    const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + 192));
    const __m256i scales_16 = _mm256_cvtepi8_epi16(scales);
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 2; ++j) {
      const __m256i q4bits1 = load(q4 + 64 * j);
      const __m256i q4bits2 = load(q4 + 64 * j + 32);
      const __m256i q4bitsH = load(qh + 32 * j);
      const __m256i q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, m3), 4);
      const __m256i q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(12)), 2);
      const __m256i q4h_2 = _mm256_and_si256(q4bitsH, _mm256_set1_epi8(48));
      const __m256i q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bitsH, _mm256_set1_epi8(-64)), 2);
      const __m256i q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0);
      const __m256i q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1);
      const __m256i q4_2 =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2);
      const __m256i q4_3 =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3);
      const int is = 4 * j;
      const __m256i sc0 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle_6(is + 0)));
      const __m256i sc1 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle_6(is + 1)));
      const __m256i sc2 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle_6(is + 2)));
      const __m256i sc3 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle_6(is + 3)));
      for (int t = 0; t < NT; ++t) {
        const uint8_t* q8 = a + t * as + i * 292 + 4 + 128 * j;
        const __m256i p16_0 = _mm256_madd_epi16(sc0, _mm256_maddubs_epi16(q4_0, load(q8)));
        const __m256i p16_1 = _mm256_madd_epi16(sc1, _mm256_maddubs_epi16(q4_1, load(q8 + 32)));
        const __m256i p16_2 = _mm256_madd_epi16(sc2, _mm256_maddubs_epi16(q4_2, load(q8 + 64)));
        const __m256i p16_3 = _mm256_madd_epi16(sc3, _mm256_maddubs_epi16(q4_3, load(q8 + 96)));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p16_0, p16_1));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p16_2, p16_3));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const uint8_t* y = a + t * as + i * 292;
      // The -32 offset: sum(q8 * 32 * scale) from the block sums.
      const __m256i q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(load(y + 260), scales_16), 5);
      const __m256i s = _mm256_sub_epi32(sumi[t], q8sclsub);
      const float d = q8k_d(y) * xd;
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum_float_8(acc[t]);
}

// ---- F16 / BF16 / F32 weights --------------------------------------------------------------
// ggml_vec_dot_f16 / _bf16 / _f32 (AVX2): 4 accumulators of 8 lanes over 32 values a step,
// reduced as (c0 + c2) + (c1 + c3), the tail in scalar. The f16 and bf16 products are exact in
// f32, so fmadd equals ggml's mul + add there.

inline float reduce4(__m256 c0, __m256 c1, __m256 c2, __m256 c3) {
  return hsum_float_8(_mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c1, c3)));
}

enum class FKind { kF16, kBF16, kF32 };

template <FKind kK>
inline __m256 load_w(const uint8_t* w, int64_t i) {
  if constexpr (kK == FKind::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i)));
  } else if constexpr (kK == FKind::kBF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
  }
}
template <FKind kK>
inline float scalar_w(const uint8_t* w, int64_t i) {
  if constexpr (kK == FKind::kF32) {
    float v;
    std::memcpy(&v, w + 4 * i, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    if constexpr (kK == FKind::kF16) return _cvtsh_ss(h);
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
}

template <FKind kK, int NT>
void dot_float(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  const int64_t np = cols & ~int64_t{31};
  __m256 c[NT][4];
  for (int t = 0; t < NT; ++t)
    for (int k = 0; k < 4; ++k) c[t][k] = _mm256_setzero_ps();
  int64_t i0 = 0;
  if constexpr (NT == 1 && kK != FKind::kBF16) {
    // One token: 4 accumulators leave half of the FMA pipes idle (4-cycle latency, 2 units), so
    // run 8 over 64 values a step and fold them. (BF16 keeps ggml's exact order: bit-identical.)
    __m256 e[4];
    for (int k = 0; k < 4; ++k) e[k] = _mm256_setzero_ps();
    const float* y = reinterpret_cast<const float*>(a);
    for (; i0 + 64 <= np; i0 += 64) {
      for (int k = 0; k < 4; ++k)
        c[0][k] =
            _mm256_fmadd_ps(load_w<kK>(w, i0 + 8 * k), _mm256_loadu_ps(y + i0 + 8 * k), c[0][k]);
      for (int k = 0; k < 4; ++k)
        e[k] = _mm256_fmadd_ps(load_w<kK>(w, i0 + 32 + 8 * k), _mm256_loadu_ps(y + i0 + 32 + 8 * k),
                               e[k]);
    }
    for (int k = 0; k < 4; ++k) c[0][k] = _mm256_add_ps(c[0][k], e[k]);
  }
  for (int64_t i = i0; i < np; i += 32) {
    const __m256 w0 = load_w<kK>(w, i), w1 = load_w<kK>(w, i + 8);
    const __m256 w2 = load_w<kK>(w, i + 16), w3 = load_w<kK>(w, i + 24);
    for (int t = 0; t < NT; ++t) {
      const float* y = reinterpret_cast<const float*>(a + t * as) + i;
      c[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(y), c[t][0]);
      c[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(y + 8), c[t][1]);
      c[t][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(y + 16), c[t][2]);
      c[t][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(y + 24), c[t][3]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const float* y = reinterpret_cast<const float*>(a + t * as);
    double sumf = reduce4(c[t][0], c[t][1], c[t][2], c[t][3]);  // ggml_float
    for (int64_t i = np; i < cols; ++i) sumf += static_cast<double>(scalar_w<kK>(w, i) * y[i]);
    out[t] = static_cast<float>(sumf);
  }
}

// F16 rows x one token: each 8 f32 activations loaded once for all NR rows, two accumulators a
// row, the next group's span prefetched as in dot_q8_rows (exactly 128 bytes of it per 16
// values). Not ggml's vec_dot order, which llama.cpp does not use for F16 either (its tinyBLAS
// runs those products): the f32 summation order alone differs.
template <int NR>
void dot_f16_rows(int64_t cols, const uint8_t* w, size_t rs, const uint8_t* a, float* out) {
  const float* x = reinterpret_cast<const float*>(a);
  const int64_t np = cols & ~int64_t{15};
  __m256 acc[NR][2];
  for (int r = 0; r < NR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(w + NR * rs);
  for (int64_t i = 0; i < np; i += 16, pf += 32 * NR) {
    _mm_prefetch(pf, _MM_HINT_T0);
    if constexpr (NR > 2) _mm_prefetch(pf + 64, _MM_HINT_T0);
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < NR; ++r) {
      const uint8_t* wr = w + r * rs;
      acc[r][0] = _mm256_fmadd_ps(load_w<FKind::kF16>(wr, i), x0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(load_w<FKind::kF16>(wr, i + 8), x1, acc[r][1]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    float sum = hsum_float_8(_mm256_add_ps(acc[r][0], acc[r][1]));
    for (int64_t i = np; i < cols; ++i) sum += scalar_w<FKind::kF16>(w + r * rs, i) * x[i];
    out[r] = sum;
  }
}

// F16 row x NT tokens with dot_f16_rows' order for each token (two accumulators over 16-value
// steps, a float sum): a token in a batch gets the bits it gets alone (Path::kNoSgemm).
template <int NT>
void dot_f16_like_rows(int64_t cols, const uint8_t* w, const uint8_t* a, size_t as, float* out) {
  const int64_t np = cols & ~int64_t{15};
  __m256 acc[NT][2];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int64_t i = 0; i < np; i += 16) {
    const __m256 w0 = load_w<FKind::kF16>(w, i), w1 = load_w<FKind::kF16>(w, i + 8);
    for (int t = 0; t < NT; ++t) {
      const float* x = reinterpret_cast<const float*>(a + t * as);
      acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc[t][1]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const float* x = reinterpret_cast<const float*>(a + t * as);
    float sum = hsum_float_8(_mm256_add_ps(acc[t][0], acc[t][1]));
    for (int64_t i = np; i < cols; ++i) sum += scalar_w<FKind::kF16>(w, i) * x[i];
    out[t] = sum;
  }
}

// Dispatch on the token count: the accumulators stay in registers.
#define NNPIPE_BY_NT(...)                                                         \
  [](int64_t c, const uint8_t* w, const uint8_t* a, size_t s, int nt, float* o) { \
    switch (nt) {                                                                 \
      case 1:                                                                     \
        return __VA_ARGS__<1>(c, w, a, s, o);                                     \
      case 2:                                                                     \
        return __VA_ARGS__<2>(c, w, a, s, o);                                     \
      case 3:                                                                     \
        return __VA_ARGS__<3>(c, w, a, s, o);                                     \
      default:                                                                    \
        return __VA_ARGS__<4>(c, w, a, s, o);                                     \
    }                                                                             \
  }

template <int NT>
void dot_q8_0(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_q8<Q8Src::kQ8_0, NT>(c, w, a, s, o);
}
template <int NT>
void dot_q4_0(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_q8<Q8Src::kQ4_0, NT>(c, w, a, s, o);
}
template <int NT>
void dot_q5_0(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_q8<Q8Src::kQ5_0, NT>(c, w, a, s, o);
}
template <int NT>
void dot_q4_1(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_q8_1<false, NT>(c, w, a, s, o);
}
template <int NT>
void dot_q5_1(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_q8_1<true, NT>(c, w, a, s, o);
}
template <int NT>
void dot_f16(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_float<FKind::kF16, NT>(c, w, a, s, o);
}
template <int NT>
void dot_bf16(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_float<FKind::kBF16, NT>(c, w, a, s, o);
}
template <int NT>
void dot_f32(int64_t c, const uint8_t* w, const uint8_t* a, size_t s, float* o) {
  dot_float<FKind::kF32, NT>(c, w, a, s, o);
}

}  // namespace

// ggml-cpu/arch/x86/quants.c quantize_row_q8_0 / _q8_1 (AVX2 branch) and F16C rounding: the
// same bytes as qmatmul_act.cpp's portable versions (which emulate this code).
bool avx2_convert_activations(GgmlType act, const float* x, int64_t cols, uint8_t* out) {
  if (act == GgmlType::kF16) {
    float* f = reinterpret_cast<float*>(out);
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8)
      _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), 0)));
    for (; i < cols; ++i) f[i] = _cvtsh_ss(_cvtss_sh(x[i], 0));
    return true;
  }
  if (act != GgmlType::kQ8_0 && act != GgmlType::kQ8_1) return false;
  const bool q8_1 = act == GgmlType::kQ8_1;
  const size_t bs = q8_1 ? 36 : 34;
  for (int64_t i = 0; i < cols / 32; ++i, x += 32) {
    uint8_t* y = out + i * bs;
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 max_abs = _mm256_andnot_ps(sign, v0);
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v1));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v2));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, v3));
    __m128 max4 = _mm_max_ps(_mm256_extractf128_ps(max_abs, 1), _mm256_castps256_ps128(max_abs));
    max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
    const float amax = _mm_cvtss_f32(max4);
    const float d = amax / 127.0f;
    const uint16_t dh = _cvtss_sh(d, 0);
    std::memcpy(y, &dh, 2);
    const __m256 mul = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), _MM_ROUND_NEAREST));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), _MM_ROUND_NEAREST));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), _MM_ROUND_NEAREST));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), _MM_ROUND_NEAREST));
    if (q8_1) {
      const __m256i s4 = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
      const __m128i s128 =
          _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
      const __m128i hi64 = _mm_unpackhi_epi64(s128, s128);
      const __m128i s64 = _mm_add_epi32(hi64, s128);
      const __m128i hi32 = _mm_shuffle_epi32(s64, _MM_SHUFFLE(2, 3, 0, 1));
      const int sum = _mm_cvtsi128_si32(_mm_add_epi32(s64, hi32));
      const uint16_t sh = _cvtss_sh(d * static_cast<float>(sum), 0);
      std::memcpy(y + 2, &sh, 2);
    }
    i0 = _mm256_packs_epi32(i0, i1);
    i2 = _mm256_packs_epi32(i2, i3);
    i0 = _mm256_packs_epi16(i0, i2);
    i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + bs - 32), i0);
  }
  return true;
}

bool avx2_dequantize(GgmlType weight, const uint8_t* src, int64_t n, float* dst) {
  if (weight == GgmlType::kQ8_0 || weight == GgmlType::kQ4_0) {
    // d * q per block (q - 8 for Q4_0: low nibbles are values 0..15, high ones 16..31).
    const bool q4 = weight == GgmlType::kQ4_0;
    const size_t bs = q4 ? 18 : 34;
    for (int64_t b = 0; b < n / 32; ++b, src += bs, dst += 32) {
      const __m256 d = _mm256_set1_ps(f16(src));
      const __m256i q =
          q4 ? _mm256_sub_epi8(bytes_from_nibbles_32(src + 2), _mm256_set1_epi8(8)) : load(src + 2);
      const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int k = 0; k < 4; ++k)
        _mm256_storeu_ps(dst + 8 * k,
                         _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]))));
    }
    return true;
  }
  if (weight != GgmlType::kF16 && weight != GgmlType::kBF16) return false;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, weight == GgmlType::kF16 ? load_w<FKind::kF16>(src, i)
                                                       : load_w<FKind::kBF16>(src, i));
  for (; i < n; ++i)
    dst[i] =
        weight == GgmlType::kF16 ? scalar_w<FKind::kF16>(src, i) : scalar_w<FKind::kBF16>(src, i);
  return true;
}

DotFn avx2_dot(GgmlType weight) {
  switch (weight) {
    case GgmlType::kF32:
      return NNPIPE_BY_NT(dot_f32);
    case GgmlType::kF16:
      return NNPIPE_BY_NT(dot_f16);
    case GgmlType::kBF16:
      return NNPIPE_BY_NT(dot_bf16);
    case GgmlType::kQ8_0:
      return NNPIPE_BY_NT(dot_q8_0);
    case GgmlType::kQ4_0:
      return NNPIPE_BY_NT(dot_q4_0);
    case GgmlType::kQ5_0:
      return NNPIPE_BY_NT(dot_q5_0);
    case GgmlType::kQ4_1:
      return NNPIPE_BY_NT(dot_q4_1);
    case GgmlType::kQ5_1:
      return NNPIPE_BY_NT(dot_q5_1);
    case GgmlType::kQ4_K:
      return NNPIPE_BY_NT(dot_q4_K);
    case GgmlType::kQ5_K:
      return NNPIPE_BY_NT(dot_q5_K);
    case GgmlType::kQ6_K:
      return NNPIPE_BY_NT(dot_q6_K);
    default:
      return nullptr;
  }
}
DotFn avx2_dot_like_rows(GgmlType weight) {
  if (weight == GgmlType::kF16) return NNPIPE_BY_NT(dot_f16_like_rows);
  return nullptr;
}

#undef NNPIPE_BY_NT

template <int NR>
void rows_q8_0(int64_t c, const uint8_t* w, size_t rs, const uint8_t* a, float* o) {
  dot_q8_rows<Q8Src::kQ8_0, NR>(c, w, rs, a, o);
}
template <int NR>
void rows_q4_0(int64_t c, const uint8_t* w, size_t rs, const uint8_t* a, float* o) {
  dot_q8_rows<Q8Src::kQ4_0, NR>(c, w, rs, a, o);
}
template <int NR>
void rows_q5_0(int64_t c, const uint8_t* w, size_t rs, const uint8_t* a, float* o) {
  dot_q8_rows<Q8Src::kQ5_0, NR>(c, w, rs, a, o);
}

// Dispatch on the row count (the last group of a matrix may be partial).
#define NNPIPE_BY_NR(FN)                                                           \
  [](int64_t c, const uint8_t* w, size_t rs, const uint8_t* a, int nr, float* o) { \
    switch (nr) {                                                                  \
      case 1:                                                                      \
        return FN<1>(c, w, rs, a, o);                                              \
      case 2:                                                                      \
        return FN<2>(c, w, rs, a, o);                                              \
      case 3:                                                                      \
        return FN<3>(c, w, rs, a, o);                                              \
      default:                                                                     \
        return FN<4>(c, w, rs, a, o);                                              \
    }                                                                              \
  }

DotRowsFn avx2_dot_rows(GgmlType weight) {
  switch (weight) {
    case GgmlType::kQ8_0:
      return NNPIPE_BY_NR(rows_q8_0);
    case GgmlType::kQ4_0:
      return NNPIPE_BY_NR(rows_q4_0);
    case GgmlType::kQ5_0:
      return NNPIPE_BY_NR(rows_q5_0);
    case GgmlType::kF16:
      return NNPIPE_BY_NR(dot_f16_rows);
    default:
      return nullptr;
  }
}
#undef NNPIPE_BY_NR

}  // namespace nnpipe::cpu::qk

#include "core/avx2_end.h"
