// The AVX2 kernels of prefill_attention.h. Only the functions after core/avx2_begin.h use AVX2;
// like qmatmul_avx2.cpp this file instantiates no template or inline function of a shared header
// there (only internal-linkage helpers), so nothing compiled for AVX2 can be picked up elsewhere.
#include "backend/cpu/prefill_attention.h"

#include <immintrin.h>
#include <math.h>

#include "core/sysinfo.h"

namespace nnpipe::cpu {

bool prefill_attention_available(int64_t head_dim) {
  return head_dim > 0 && head_dim % 8 == 0 && cpu_has_avx2_fma_f16c();
}

}  // namespace nnpipe::cpu

#include "core/avx2_begin.h"  // the AVX2 functions start here

namespace nnpipe::cpu {
namespace {

inline float round_f16(float x) {
  return _cvtsh_ss(_cvtss_sh(x, 0));
}

// o[0 .. 8*NB) = sum_j p[j] * v_j[0 .. 8*NB), v_j = vf + j * kvd: in j order, one fmadd per
// element and key (the order of attention_kv's axpy), exact zeros skipped as there.
template <int NB>
void pv(float* o, const float* p, const float* vf, int64_t len, int64_t kvd) {
  __m256 acc[NB];
  for (int k = 0; k < NB; ++k) acc[k] = _mm256_setzero_ps();
  for (int64_t j = 0; j < len; ++j) {
    if (p[j] == 0.0f) continue;
    const __m256 b = _mm256_set1_ps(p[j]);
    const float* v = vf + j * kvd;
    for (int k = 0; k < NB; ++k) acc[k] = _mm256_fmadd_ps(b, _mm256_loadu_ps(v + 8 * k), acc[k]);
  }
  for (int k = 0; k < NB; ++k) _mm256_storeu_ps(o + 8 * k, acc[k]);
}

void pv_any(float* o, const float* p, const float* vf, int64_t len, int64_t kvd, int nb) {
  switch (nb) {
    case 1:
      return pv<1>(o, p, vf, len, kvd);
    case 2:
      return pv<2>(o, p, vf, len, kvd);
    case 3:
      return pv<3>(o, p, vf, len, kvd);
    case 4:
      return pv<4>(o, p, vf, len, kvd);
    case 5:
      return pv<5>(o, p, vf, len, kvd);
    case 6:
      return pv<6>(o, p, vf, len, kvd);
    case 7:
      return pv<7>(o, p, vf, len, kvd);
    default:
      return pv<8>(o, p, vf, len, kvd);
  }
}

}  // namespace

void prefill_expand_kv(const uint16_t* K, const uint16_t* V, const PrefillShape& s, float* kt,
                       float* vf, int64_t j0, int64_t j1) {
  const int64_t kvd = s.KV * s.D, Lp = s.Lp;
  alignas(32) float tmp[8];
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* kr = K + j * kvd;
    const uint16_t* vr = V + j * kvd;
    for (int64_t c = 0; c < kvd; c += 8) {
      // K row j, columns c..c+7 (head c / D, dims c % D ..) -> kt[(c + e) * Lp + j]
      _mm256_store_ps(tmp,
                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kr + c))));
      for (int e = 0; e < 8; ++e) kt[(c + e) * Lp + j] = tmp[e];
      _mm256_storeu_ps(vf + j * kvd + c,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vr + c))));
    }
  }
  if (j1 == s.L)
    for (int64_t c = 0; c < kvd; ++c)
      for (int64_t j = s.L; j < Lp; ++j) kt[c * Lp + j] = 0.0f;
}

void prefill_attention_group(float* out, const float* q, const float* kt, const float* vf,
                             const PrefillShape& s, int64_t h, int64_t i0, int nq, float* scratch) {
  const int64_t D = s.D, HD = s.H * s.D, kvd = s.KV * s.D, Lp = s.Lp;
  const int64_t kh = h / (s.H / s.KV);
  float* q16 = scratch;         // (4, D): the queries rounded to f16 (0 past nq)
  float* sc = scratch + 4 * D;  // (4, Lp): scores, then probabilities
  for (int qi = 0; qi < 4; ++qi)
    for (int64_t d = 0; d < D; ++d)
      q16[qi * D + d] = qi < nq ? round_f16(q[(i0 + qi) * HD + h * D + d]) : 0.0f;

  // Scores of the 4 queries against keys [0, past + i0 + nq), 16 keys a tile: kt rows are one
  // head dimension each, so a tile is 2 loads + 4 broadcasts for 8 fmadds per dimension.
  const int64_t len_max = s.past + i0 + nq;
  const float* k = kt + kh * D * Lp;
  const __m256 scale = _mm256_set1_ps(s.scale);
  for (int64_t j0 = 0; j0 < len_max; j0 += 16) {
    __m256 a[4][2];
    for (int qi = 0; qi < 4; ++qi) a[qi][0] = a[qi][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m256 k0 = _mm256_loadu_ps(k + d * Lp + j0);
      const __m256 k1 = _mm256_loadu_ps(k + d * Lp + j0 + 8);
      for (int qi = 0; qi < 4; ++qi) {
        const __m256 b = _mm256_broadcast_ss(q16 + qi * D + d);
        a[qi][0] = _mm256_fmadd_ps(b, k0, a[qi][0]);
        a[qi][1] = _mm256_fmadd_ps(b, k1, a[qi][1]);
      }
    }
    for (int qi = 0; qi < 4; ++qi) {
      _mm256_storeu_ps(sc + qi * Lp + j0, _mm256_mul_ps(a[qi][0], scale));
      _mm256_storeu_ps(sc + qi * Lp + j0 + 8, _mm256_mul_ps(a[qi][1], scale));
    }
  }

  for (int qi = 0; qi < nq; ++qi) {
    const int64_t len = s.past + i0 + qi + 1;  // causal: keys up to the query's own position
    float* p = sc + qi * Lp;
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) mx = p[j] > mx ? p[j] : mx;
    double sum = 0;
    for (int64_t j = 0; j < len; ++j) {
      p[j] = expf(p[j] - mx);
      sum += p[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < len; ++j) p[j] = round_f16(p[j] * inv);
    float* o = out + (i0 + qi) * HD + h * D;
    for (int64_t dc = 0; dc < D; dc += 64) {
      const int nb = static_cast<int>((D - dc) / 8 < 8 ? (D - dc) / 8 : 8);
      pv_any(o + dc, p, vf + kh * D + dc, len, kvd, nb);
    }
  }
}

}  // namespace nnpipe::cpu

#include "core/avx2_end.h"
