// The AVX2 kernels of prefill_attention.h. Only the functions after core/avx2_begin.h use AVX2;
// like qmatmul_avx2.cpp this file instantiates no template or inline function of a shared header
// there (only internal-linkage helpers), so nothing compiled for AVX2 can be picked up elsewhere.
#include "backend/cpu/prefill_attention.h"

#include <immintrin.h>
#include <math.h>

#include <cmath>
#include <cstring>

#include "core/half.h"
#include "core/sysinfo.h"

namespace nnpipe::cpu {

bool prefill_attention_available(int64_t head_dim) {
  return head_dim > 0 && head_dim % 8 == 0 && cpu_has_avx2_fma_f16c();
}

namespace {

// Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) = 1 + r + r^2 P(r), times 2^n.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kExpMin = -87.33654f;  // exp below this is taken as 0 (2^n stays a normal float)

// The double sum of the 4 interleaved partial sums j mod 4, as the vector versions add them.
double sum4(const float* e, int64_t len) {
  double s[4] = {0, 0, 0, 0};
  for (int64_t j = 0; j < len; ++j) s[j & 3] += e[j];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

}  // namespace

void softmax_f16_ref(float* p, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = p[j] > mx ? p[j] : mx;
  for (int64_t j = 0; j < len; ++j) {
    const float x = p[j] - mx;
    if (!(x >= kExpMin)) {  // NaN stays NaN (as in the vector versions); below e^-87.3: 0
      p[j] = std::isnan(x) ? x : 0.0f;
      continue;
    }
    const float n = std::nearbyint(x * kLog2e);
    float r = std::fma(-n, kLn2Hi, x);
    r = std::fma(-n, kLn2Lo, r);
    float y = std::fma(kP0, r, kP1);
    y = std::fma(y, r, kP2);
    y = std::fma(y, r, kP3);
    y = std::fma(y, r, kP4);
    y = std::fma(y, r, kP5);
    y = std::fma(y, r * r, r) + 1.0f;
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    p[j] = y * scale;
  }
  const float inv = static_cast<float>(1.0 / sum4(p, len));
  for (int64_t j = 0; j < len; ++j) p[j] = f16_to_f32(f32_to_f16(p[j] * inv));
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

// exp of 8 values as softmax_f16_ref computes each (NaN stays NaN).
inline __m256 exp8(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP5));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-127.0f))),
                       _mm256_set1_epi32(127)),
      23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

}  // namespace

void softmax_f16_avx2(float* p, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = p[j] > mx ? p[j] : mx;
  const __m256 m = _mm256_set1_ps(mx);
  __m256d s = _mm256_setzero_pd();  // lane k: the partial sum of j = k mod 4
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), m));
    _mm256_storeu_ps(p + j, e);
    s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  if (j < len) {  // the tail through a padded copy: the same lanes' arithmetic
    alignas(32) float t[8];
    for (int k = 0; k < 8; ++k) t[k] = j + k < len ? p[j + k] : mx;
    const __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(t), m));
    _mm256_store_ps(t, e);
    for (int64_t k = 0; j + k < len; ++k) p[j + k] = t[k];
  }
  alignas(32) double ps[4];
  _mm256_store_pd(ps, s);
  for (int64_t k = j; k < len; ++k) ps[k & 3] += p[k];
  const float inv = static_cast<float>(1.0 / ((ps[0] + ps[1]) + (ps[2] + ps[3])));
  const __m256 vi = _mm256_set1_ps(inv);
  for (j = 0; j + 8 <= len; j += 8)
    _mm256_storeu_ps(p + j,
                     _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(p + j), vi),
                                                     _MM_FROUND_TO_NEAREST_INT)));
  for (; j < len; ++j) p[j] = round_f16(p[j] * inv);
}

void prefill_expand_kv(const uint16_t* K, const uint16_t* V, const PrefillShape& s, float* kt,
                       float* vf, int64_t j0, int64_t j1) {
  const int64_t kvd = s.KV * s.D, Lp = s.Lp;
  alignas(32) float tmp[8];
  // Whole blocks of 8 rows: 8 x 8 transposes of K in registers (8 stores of 8 keys per block).
  for (; j0 + 8 <= j1; j0 += 8) {
    for (int64_t c = 0; c < kvd; c += 8) {
      __m256 r[8];
      for (int e = 0; e < 8; ++e)
        r[e] = _mm256_cvtph_ps(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(K + (j0 + e) * kvd + c)));
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 col[8] = {
          _mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
          _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
          _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
          _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int e = 0; e < 8; ++e) _mm256_storeu_ps(kt + (c + e) * Lp + j0, col[e]);
    }
    for (int64_t j = j0; j < j0 + 8; ++j)
      for (int64_t c = 0; c < kvd; c += 8)
        _mm256_storeu_ps(
            vf + j * kvd + c,
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(V + j * kvd + c))));
  }
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
    softmax_f16_avx2(p, len);
    float* o = out + (i0 + qi) * HD + h * D;
    for (int64_t dc = 0; dc < D; dc += 64) {
      const int nb = static_cast<int>((D - dc) / 8 < 8 ? (D - dc) / 8 : 8);
      pv_any(o + dc, p, vf + kh * D + dc, len, kvd, nb);
    }
  }
}

}  // namespace nnpipe::cpu

#include "core/avx2_end.h"
