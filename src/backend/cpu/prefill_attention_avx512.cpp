// AVX-512F version of prefill_attention_group (prefill_attention.h), for head_dim % 16 == 0: a
// score tile is 4 queries x 32 keys (8 accumulators of 16 lanes, 2 loads + 4 broadcasts per
// dimension), and P V runs the group's 4 queries together, so a V row is loaded once for 4
// queries instead of once per query. Every lane computes what the AVX2 kernel's lane computes, in
// the same order (a key's dot product over dimensions in order; an output value's sum over keys
// in order, exact zeros skipped), so both kernels give the same bits.
//
// Compiled for AVX-512F (attribute push below) and chosen at run time; no shared inline function
// or template is instantiated inside the push (see core/avx2_begin.h for why).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <math.h>

#include "backend/cpu/prefill_attention.h"
#include "core/sysinfo.h"

namespace nnpipe::cpu {

bool prefill_attention_avx512_available(int64_t head_dim) {
  return cpu_has_avx512f() && head_dim > 0 && head_dim % 16 == 0 && head_dim <= 256;
}

}  // namespace nnpipe::cpu

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#endif

namespace nnpipe::cpu {
namespace {

inline float round_f16(float x) {
  return _cvtsh_ss(_cvtss_sh(x, 0));
}

// exp of 16 values, lane for lane the arithmetic of softmax_f16_ref (prefill_attention.cpp).
inline __m512 exp16(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(n, _mm512_set1_ps(-127.0f))),
                       _mm512_set1_epi32(127)),
      23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), y, _mm512_castsi512_ps(e));
}

inline __m256d add_quarters(__m256d s, __m512 e) {  // lanes k += elements 4q + k, q = 0..3
  s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm512_castps512_ps128(e)));
  s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 1)));
  s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 2)));
  return _mm256_add_pd(s, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 3)));
}

// Scores of 4 queries (q16 rows, D apart) against keys [j0, j0 + 16 * NK) of kt (rows Lp apart).
template <int NK>
inline void score_tile(float* sc, const float* q16, const float* k, int64_t D, int64_t Lp,
                       int64_t j0, __m512 scale) {
  __m512 a[4][NK];
  for (int qi = 0; qi < 4; ++qi)
    for (int c = 0; c < NK; ++c) a[qi][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 kv[NK];
    for (int c = 0; c < NK; ++c) kv[c] = _mm512_loadu_ps(k + d * Lp + j0 + 16 * c);
    for (int qi = 0; qi < 4; ++qi) {
      const __m512 b = _mm512_set1_ps(q16[qi * D + d]);
      for (int c = 0; c < NK; ++c) a[qi][c] = _mm512_fmadd_ps(b, kv[c], a[qi][c]);
    }
  }
  for (int qi = 0; qi < 4; ++qi)
    for (int c = 0; c < NK; ++c)
      _mm512_storeu_ps(sc + qi * Lp + j0 + 16 * c, _mm512_mul_ps(a[qi][c], scale));
}

// o_qi[dc .. dc + 16 * NB) = sum_j p_qi[j] v_j for the nq queries, keys [0, len_qi) each.
template <int NB>
inline void pv_group(float* const* o, const float* const* p, const int64_t* len, int nq,
                     const float* vf, int64_t kvd) {
  __m512 acc[4][NB];
  for (int qi = 0; qi < 4; ++qi)
    for (int c = 0; c < NB; ++c) acc[qi][c] = _mm512_setzero_ps();
  int64_t common = len[0];
  for (int qi = 1; qi < nq; ++qi) common = len[qi] < common ? len[qi] : common;
  // Exact zeros are skipped by masking (no branch): the accumulator stays as it was, so a 0 never
  // meets an inf in V, as in the AVX2 kernel's skip.
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < common; ++j) {
    const float* v = vf + j * kvd;
    __m512 vv[NB];
    for (int c = 0; c < NB; ++c) vv[c] = _mm512_loadu_ps(v + 16 * c);
    for (int qi = 0; qi < nq; ++qi) {
      const __m512 b = _mm512_set1_ps(p[qi][j]);
      const __mmask16 live = _mm512_cmp_ps_mask(b, zero, _CMP_NEQ_UQ);
      for (int c = 0; c < NB; ++c) acc[qi][c] = _mm512_mask3_fmadd_ps(b, vv[c], acc[qi][c], live);
    }
  }
  for (int qi = 0; qi < nq; ++qi) {
    for (int64_t j = common; j < len[qi]; ++j) {
      if (p[qi][j] == 0.0f) continue;
      const __m512 b = _mm512_set1_ps(p[qi][j]);
      const float* v = vf + j * kvd;
      for (int c = 0; c < NB; ++c)
        acc[qi][c] = _mm512_fmadd_ps(b, _mm512_loadu_ps(v + 16 * c), acc[qi][c]);
    }
    for (int c = 0; c < NB; ++c) _mm512_storeu_ps(o[qi] + 16 * c, acc[qi][c]);
  }
}

}  // namespace

void softmax_f16_avx512(float* p, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = p[j] > mx ? p[j] : mx;
  const __m512 m = _mm512_set1_ps(mx);
  __m256d s = _mm256_setzero_pd();  // lane k: the partial sum of j = k mod 4
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + j), m));
    _mm512_storeu_ps(p + j, e);
    s = add_quarters(s, e);
  }
  if (j < len) {  // the tail: masked lanes, the same arithmetic
    const __mmask16 k = static_cast<__mmask16>((1u << (len - j)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(m, k, p + j), m));
    _mm512_mask_storeu_ps(p + j, k, e);
  }
  alignas(32) double ps[4];
  _mm256_store_pd(ps, s);
  for (int64_t t = j; t < len; ++t) ps[t & 3] += p[t];
  const float inv = static_cast<float>(1.0 / ((ps[0] + ps[1]) + (ps[2] + ps[3])));
  const __m512 vi = _mm512_set1_ps(inv);
  for (j = 0; j + 16 <= len; j += 16)
    _mm512_storeu_ps(p + j,
                     _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(p + j), vi),
                                                     _MM_FROUND_TO_NEAREST_INT)));
  for (; j < len; ++j) p[j] = round_f16(p[j] * inv);
}

void prefill_attention_group_avx512(float* out, const float* q, const float* kt, const float* vf,
                                    const PrefillShape& s, int64_t h, int64_t i0, int nq,
                                    float* scratch) {
  const int64_t D = s.D, HD = s.H * s.D, kvd = s.KV * s.D, Lp = s.Lp;
  const int64_t kh = h / (s.H / s.KV);
  float* q16 = scratch;         // (4, D): the queries rounded to f16 (0 past nq)
  float* sc = scratch + 4 * D;  // (4, Lp): scores, then probabilities
  for (int qi = 0; qi < 4; ++qi)
    for (int64_t d = 0; d < D; d += 16)
      _mm512_storeu_ps(
          q16 + qi * D + d,
          qi < nq ? _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(q + (i0 + qi) * HD + h * D + d),
                                                    _MM_FROUND_TO_NEAREST_INT))
                  : _mm512_setzero_ps());

  // Scores against keys [0, past + i0 + nq): 32-key tiles, then one 16-key tile (Lp % 16 == 0).
  const int64_t len_max = s.past + i0 + nq;
  const float* k = kt + kh * D * Lp;
  const __m512 scale = _mm512_set1_ps(s.scale);
  for (int64_t j0 = 0; j0 < len_max;) {
    if (len_max - j0 > 16 && j0 + 32 <= Lp) {
      score_tile<2>(sc, q16, k, D, Lp, j0, scale);
      j0 += 32;
    } else {
      score_tile<1>(sc, q16, k, D, Lp, j0, scale);
      j0 += 16;
    }
  }

  const float* p[4];
  float* o[4];
  int64_t len[4];
  for (int qi = 0; qi < nq; ++qi) {
    len[qi] = s.past + i0 + qi + 1;  // causal: keys up to the query's own position
    float* pr = sc + qi * Lp;
    softmax_f16_avx512(pr, len[qi]);
    p[qi] = pr;
    o[qi] = out + (i0 + qi) * HD + h * D;
  }
  // P V in chunks of 64 dimensions (4 accumulators per query), as the AVX2 kernel's chunks of 64.
  for (int64_t dc = 0; dc < D; dc += 64) {
    float* od[4];
    for (int qi = 0; qi < nq; ++qi) od[qi] = o[qi] + dc;
    const float* v = vf + kh * D + dc;
    switch ((D - dc) / 16 < 4 ? (D - dc) / 16 : 4) {
      case 1:
        pv_group<1>(od, p, len, nq, v, kvd);
        break;
      case 2:
        pv_group<2>(od, p, len, nq, v, kvd);
        break;
      case 3:
        pv_group<3>(od, p, len, nq, v, kvd);
        break;
      default:
        pv_group<4>(od, p, len, nq, v, kvd);
        break;
    }
  }
}

}  // namespace nnpipe::cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
