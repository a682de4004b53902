// AVX-512 BF16 GEMMs for a frozen bf16 base (Numerics::kTorchBf16; see matmul_bf16.h).
//
// One register kernel for both products: C (M, cols) (+)= A (M, K) B (K, cols), A bf16 row-major
// (a row's values in pairs along K), B packed in panels of up to 48 columns, [K/2][cols][2]. For
// each pair of K the kernel broadcasts a row's pair (one dword) and multiplies it with the
// panel's 16-column vectors by vdpbf16ps (16 lanes x 2 products, f32 accumulation): up to 8 rows x
// 3 vectors, 24 accumulators. Each output is a sequential sum over the pairs of one K block
// (kBf16KBlock values); the blocks' sums are added to C in order, so an output's bits do not
// depend on which tile or thread computed it.
//
// - Forward y (N, O) = x W^T is computed as y^T (O, N) = W x^T: A = W as stored (its rows are
//   the broadcast operand, never packed or converted), B = bf16(x)^T, packed once per call and
//   shared by the threads, which split W's rows. An 8-row tile is written transposed into y.
// - Input gradient dx (N, I) += dout W: A = bf16(dout), rounded per K block by each thread, B =
//   W along O, packed per K block and 48-column panel by interleaving pairs of W rows (two loads
//   and a vpermw per 16 columns); the threads split the columns of dx.
// Packing a weight once and caching it would cost another ~1 GB beside a 0.5B base; the per-call
// packing of dx reads W once per call, as the product itself does (~5% of the kernels' time).
// Measured on one Zen 5 core (bench/bf16_gemm_bench, N = 256, the 0.5B shapes): 350-440 GFLOP/s,
// about 2x OpenBLAS sgemm on the same weights in f32 (190-230).
//
// The kernels are compiled for AVX-512 F/BW/VL/BF16 (attribute push below) and chosen at run
// time; the drivers outside that region are plain C++.

// GCC 12's AVX-512 headers initialise their "undefined" vectors from themselves.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "backend/cpu/matmul_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/sysinfo.h"

namespace nnpipe::cpu {

namespace {

constexpr int kMR = 8;                    // rows of a register tile
constexpr int kNV = 3;                    // 16-column vectors of a register tile
constexpr int kNR = 16 * kNV;             // columns of a panel
constexpr int64_t kKP = kBf16KBlock / 2;  // pairs of K per block
constexpr int64_t kChunkRows = 64;        // forward: W rows a thread takes at a time

// C tile (mr, 16 nv) (+)= A rows (mr, 2 kp) B panel (kp, 16 nv, 2); columns >= ncols untouched.
using MicroFn = void (*)(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t kp, float* c,
                         int64_t ldc, int ncols, bool add);

}  // namespace

}  // namespace nnpipe::cpu

#if defined(__clang__)
#pragma clang attribute push(                                                      \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")
#endif

namespace nnpipe::cpu {

namespace {

inline int32_t load_pair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int MR, int NV>
void micro(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t kp, float* c, int64_t ldc,
           int ncols, bool add) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh bv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + (p * NV + v) * 32);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(load_pair(a + r * lda + 2 * p));
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 3
  for (int v = 0; v < NV; ++v) {
    const int left = ncols - 16 * v;
    if (left <= 0) break;
    const __mmask16 m = left >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << left) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      float* cp = c + r * ldc + 16 * v;
      __m512 s = acc[r][v];
      if (add) s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, cp), s);
      _mm512_mask_storeu_ps(cp, m, s);
    }
  }
}

template <int MR>
MicroFn micro_nv(int nv) {
  return nv == 1 ? micro<MR, 1> : nv == 2 ? micro<MR, 2> : micro<MR, 3>;
}

MicroFn micro_for(int mr, int nv) {
  switch (mr) {
    case 1:
      return micro_nv<1>(nv);
    case 2:
      return micro_nv<2>(nv);
    case 3:
      return micro_nv<3>(nv);
    case 4:
      return micro_nv<4>(nv);
    case 5:
      return micro_nv<5>(nv);
    case 6:
      return micro_nv<6>(nv);
    case 7:
      return micro_nv<7>(nv);
    default:
      return micro_nv<8>(nv);
  }
}

// 16 f32 bit patterns -> bf16: + 0x7fff + the lowest kept bit, then the high half; NaNs quiet.
inline __m256i round16(__m512i u) {
  const __m512i hi = _mm512_srli_epi32(u, 16);
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                           _mm512_and_si512(hi, _mm512_set1_epi32(1)))),
      16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// cols f32 -> bf16, round to nearest even with quiet NaNs (core/half.h's f32_to_bf16, bit for
// bit, subnormals included), then zeros up to `padded` columns.
void round_row(const float* src, int64_t cols, int64_t padded, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        round16(_mm512_castps_si512(_mm512_loadu_ps(src + i))));
  for (; i < padded; i += 16) {  // the last values, then zeros
    const int64_t left = cols - i, store = padded - i < 16 ? padded - i : 16;
    const __mmask16 m = left <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << left) - 1);
    _mm256_mask_storeu_epi16(dst + i, static_cast<__mmask16>((1u << store) - 1),
                             round16(_mm512_castps_si512(_mm512_maskz_loadu_ps(m, src + i))));
  }
}

// dst (kp1 - kp0, 16 nv, 2): dst[p][c][e] = W[2 (kp0 + p) + e][i0 + c], zero past W's edges.
void pack_w_pairs(const uint16_t* w, int64_t o, int64_t in, int64_t kp0, int64_t kp1, int64_t i0,
                  int nv, uint16_t* dst) {
  // Word k of the low half and word k of the high half side by side.
  alignas(64) static constexpr uint16_t kIdx[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                    21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                    11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  __mmask16 m[kNV];
  for (int v = 0; v < nv; ++v) {
    const int64_t left = in - i0 - 16 * v;
    m[v] = left >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << left) - 1);
  }
  for (int64_t p = kp0; p < kp1; ++p) {
    const uint16_t* r0 = w + 2 * p * in + i0;
    const bool second = 2 * p + 1 < o;
    // W streams from memory along O, 96 bytes per row: fetch the rows 8 pairs ahead.
    if (p + 8 < kp1) {
      const char* ahead = reinterpret_cast<const char*>(r0 + 16 * in);
      _mm_prefetch(ahead, _MM_HINT_T0);
      _mm_prefetch(ahead + 64, _MM_HINT_T0);
      if (2 * (p + 8) + 1 < o) {
        _mm_prefetch(ahead + 2 * in, _MM_HINT_T0);
        _mm_prefetch(ahead + 2 * in + 64, _MM_HINT_T0);
      }
    }
    for (int v = 0; v < nv; ++v) {
      const __m256i lo = _mm256_maskz_loadu_epi16(m[v], r0 + 16 * v);
      const __m256i hi =
          second ? _mm256_maskz_loadu_epi16(m[v], r0 + in + 16 * v) : _mm256_setzero_si256();
      const __m512i both = _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1);
      _mm512_storeu_si512(dst + ((p - kp0) * nv + v) * 32, _mm512_permutexvar_epi16(idx, both));
    }
  }
}

}  // namespace

}  // namespace nnpipe::cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace nnpipe::cpu {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Rows of f32 (stride `cols`) as bf16 rows of 2 kp values (odd cols: a zero appended).
void round_rows(const float* src, int64_t rows, int64_t cols, int64_t kp, uint16_t* dst,
                int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) round_row(src + r * cols, cols, 2 * kp, dst + r * 2 * kp);
}

// The part [begin, end) of `count` items that thread t of `threads` takes: contiguous, in units
// of `unit` items.
std::pair<int64_t, int64_t> share(int64_t count, int64_t unit, int t, int threads) {
  const int64_t units = ceil_div(count, unit);
  const int64_t b = units * t / threads, e = units * (t + 1) / threads;
  return {std::min(count, b * unit), std::min(count, e * unit)};
}

int team_size(int64_t work_units) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), work_units)));
}

std::atomic<bool> g_force_emulation{false};

}  // namespace

bool bf16_gemm_available() {
  return cpu_has_avx512bf16() && !g_force_emulation.load(std::memory_order_relaxed);
}

void bf16_gemm_force_emulation(bool on) {
  g_force_emulation.store(on, std::memory_order_relaxed);
}

void bf16_matmul(float* y, const float* x, int64_t n, const uint16_t* w, int64_t o, int64_t in) {
  if (n <= 0 || o <= 0) return;
  if (in <= 0) {
    std::fill(y, y + n * o, 0.0f);
    return;
  }
  const int64_t kp = ceil_div(in, 2);
  const int threads = team_size(ceil_div(o, kChunkRows));
  thread_local std::vector<uint16_t> xb, xt;
  xb.resize(static_cast<size_t>(n * 2 * kp));
  round_rows(x, n, in, kp, xb.data(), threads);
  // bf16(x)^T in panels of 48 tokens: panel j at j * kp * kNR * 2, [kp][16 nv][2].
  const int64_t npan = ceil_div(n, kNR);
  xt.resize(static_cast<size_t>(npan * kp * kNR * 2));
  {
    const auto* src = reinterpret_cast<const uint32_t*>(xb.data());  // (N, kp) pairs
    auto* dst = reinterpret_cast<uint32_t*>(xt.data());
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && npan > 1)
    for (int64_t j = 0; j < npan; ++j) {
      const int64_t n0 = j * kNR, nc = std::min<int64_t>(kNR, n - n0);
      const int64_t width = 16 * ceil_div(nc, 16);
      uint32_t* pan = dst + j * kp * kNR;
      for (int64_t c = 0; c < width; ++c)
        for (int64_t p = 0; p < kp; ++p) pan[p * width + c] = c < nc ? src[(n0 + c) * kp + p] : 0u;
    }
  }
  const uint16_t* xtp = xt.data();
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const auto [o0, o1] = share(o, kChunkRows, omp_get_thread_num(), omp_get_num_threads());
    // Odd I: the chunk's rows copied with a zero appended, so that every pair lies in its row.
    std::vector<uint16_t> wpad(in % 2 ? static_cast<size_t>(kChunkRows * 2 * kp) : 0);
    alignas(64) float tile[kMR * kNR];
    for (int64_t r0 = o0; r0 < o1; r0 += kChunkRows) {
      const int64_t nr = std::min(kChunkRows, o1 - r0);
      const uint16_t* a = w + r0 * in;
      int64_t lda = in;
      if (in % 2) {
        for (int64_t r = 0; r < nr; ++r) {
          std::memcpy(wpad.data() + r * 2 * kp, w + (r0 + r) * in, static_cast<size_t>(in) * 2);
          wpad[static_cast<size_t>(r * 2 * kp + in)] = 0;
        }
        a = wpad.data();
        lda = 2 * kp;
      }
      for (int64_t k0 = 0; k0 < kp; k0 += kKP) {
        const int64_t kb = std::min(kKP, kp - k0);
        for (int64_t j = 0; j < npan; ++j) {
          const int64_t n0 = j * kNR, nc = std::min<int64_t>(kNR, n - n0);
          const int nv = static_cast<int>(ceil_div(nc, 16));
          const uint16_t* b = xtp + (j * kp * kNR + k0 * 16 * nv) * 2;
          for (int64_t rr = 0; rr < nr; rr += kMR) {
            const int mr = static_cast<int>(std::min<int64_t>(kMR, nr - rr));
            micro_for(mr, nv)(a + rr * lda + 2 * k0, lda, b, kb, tile, kNR, kNR, false);
            // The tile holds y^T (mr rows of W, nc tokens).
            float* yp = y + n0 * o + r0 + rr;
            for (int64_t c = 0; c < nc; ++c)
              for (int r = 0; r < mr; ++r) {
                float& dst = yp[c * o + r];
                dst = k0 == 0 ? tile[r * kNR + c] : dst + tile[r * kNR + c];
              }
          }
        }
      }
    }
  }
}

void bf16_matmul_dx(float* dx, const float* dout, int64_t n, const uint16_t* w, int64_t o,
                    int64_t in) {
  if (n <= 0 || o <= 0 || in <= 0) return;
  const int64_t kp = ceil_div(o, 2);
  const int64_t npan = ceil_div(in, kNR);
  const int threads = team_size(npan);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // Each thread owns whole panels of dx's columns, so the K blocks need no barrier. Each rounds
    // the K block of dout it multiplies (N, 2 kb) itself: a lm_head's dout (M, 151936) never
    // exists as bf16, and the block stays in the thread's cache.
    const auto [j0, j1] = share(npan, 1, omp_get_thread_num(), omp_get_num_threads());
    std::vector<uint16_t> bp(static_cast<size_t>(kKP * kNR * 2)), ab;
    if (j0 < j1) ab.resize(static_cast<size_t>(n * 2 * kKP));
    for (int64_t k0 = 0; k0 < kp && j0 < j1; k0 += kKP) {
      const int64_t kb = std::min(kKP, kp - k0);
      const int64_t cols = std::min(2 * kb, o - 2 * k0);  // dout columns of the block
      for (int64_t r = 0; r < n; ++r)
        round_row(dout + r * o + 2 * k0, cols, 2 * kb, ab.data() + r * 2 * kb);
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i0 = j * kNR, nc = std::min<int64_t>(kNR, in - i0);
        const int nv = static_cast<int>(ceil_div(nc, 16));
        pack_w_pairs(w, o, in, k0, k0 + kb, i0, nv, bp.data());
        for (int64_t r0 = 0; r0 < n; r0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, n - r0));
          micro_for(mr, nv)(ab.data() + r0 * 2 * kb, 2 * kb, bp.data(), kb, dx + r0 * in + i0, in,
                            static_cast<int>(nc), true);
        }
      }
    }
  }
}

}  // namespace nnpipe::cpu
