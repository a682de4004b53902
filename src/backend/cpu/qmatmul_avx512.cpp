// AVX-512 F16 tiles for the batch-invariant path (Path::kNoSgemm: the server's continuous
// batching). A tile is up to 4 weight rows x 4 tokens with one 16-lane accumulator per pair, so a
// 16-value step loads 4 weight and 4 activation vectors for 16 FMAs, where the one-row AVX2 kernel
// (dot_f16_like_rows) loads 2 + 2 NT for 2 NT FMAs and is bound by its loads.
//
// Bits: lanes 0-7 of an accumulator are dot_f16_rows' first 8-lane accumulator and lanes 8-15 its
// second (the same fmadd per lane, in the same order over 16-value steps), and the reduction adds
// the two halves and then takes ggml's hsum_float_8: every (row, token) result equals the
// one-token decode kernel's bit for bit. Only for cols % 16 == 0 (that kernel sums a scalar tail).
//
// Compiled for AVX-512F (attribute push below) and chosen at run time; no shared inline function
// or template is instantiated here (see core/avx2_begin.h for why).
// GCC 12 warns that _mm512_undefined_ps() inside its own intrinsics (cvtph_ps, extractf64x4) is
// used uninitialized: a false positive located in the header, so it is silenced before it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "backend/cpu/qmatmul_kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#endif

namespace nnpipe::cpu::qk {

namespace {

// ggml's hsum_float_8 (as in qmatmul_avx2.cpp).
inline float hsum8(__m256 x) {
  __m128 res = _mm256_extractf128_ps(x, 1);
  res = _mm_add_ps(res, _mm256_castps256_ps128(x));
  res = _mm_add_ps(res, _mm_movehl_ps(res, res));
  res = _mm_add_ss(res, _mm_movehdup_ps(res));
  return _mm_cvtss_f32(res);
}

// out[t * os + r] = W row r . act row t for r < NR, t < NT; W rows rs bytes apart (f16), act rows
// as bytes apart (f32 values already rounded to f16). cols % 16 == 0.
template <int NR, int NT>
void f16_tile(int64_t cols, const uint8_t* w, size_t rs, const uint8_t* act, size_t as, float* out,
              size_t os) {
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < cols; i += 16) {
    __m512 wv[NR];
    for (int r = 0; r < NR; ++r)
      wv[r] = _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * rs) + i / 16));
    for (int t = 0; t < NT; ++t) {
      const __m512 x = _mm512_loadu_ps(reinterpret_cast<const float*>(act + t * as) + i);
      for (int r = 0; r < NR; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], x, acc[r][t]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) {
      const __m256 lo = _mm512_castps512_ps256(acc[r][t]);
      const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][t]), 1));
      out[static_cast<size_t>(t) * os + static_cast<size_t>(r)] = hsum8(_mm256_add_ps(lo, hi));
    }
}

template <int NR>
void f16_tile_nt(int64_t cols, const uint8_t* w, size_t rs, const uint8_t* act, size_t as, int nt,
                 float* out, size_t os) {
  switch (nt) {
    case 1:
      return f16_tile<NR, 1>(cols, w, rs, act, as, out, os);
    case 2:
      return f16_tile<NR, 2>(cols, w, rs, act, as, out, os);
    case 3:
      return f16_tile<NR, 3>(cols, w, rs, act, as, out, os);
    default:
      return f16_tile<NR, 4>(cols, w, rs, act, as, out, os);
  }
}

void f16_tile_any(int64_t cols, const uint8_t* w, size_t rs, int nr, const uint8_t* act, size_t as,
                  int nt, float* out, size_t os) {
  switch (nr) {
    case 1:
      return f16_tile_nt<1>(cols, w, rs, act, as, nt, out, os);
    case 2:
      return f16_tile_nt<2>(cols, w, rs, act, as, nt, out, os);
    case 3:
      return f16_tile_nt<3>(cols, w, rs, act, as, nt, out, os);
    default:
      return f16_tile_nt<4>(cols, w, rs, act, as, nt, out, os);
  }
}

}  // namespace

F16TileFn avx512_f16_tile() {
  return f16_tile_any;
}

}  // namespace nnpipe::cpu::qk

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
