// AVX-512 VNNI integer GEMM for prompts over Q8_0/Q4_0 (and Q4_K/Q6_K, below) weights: the
// activations' Q8_0 blocks (qmatmul_act.cpp, ggml's from_float) times the weights' int8 values
// with vpdpbusd, one f32 multiply-add per block and (row, token) pair. It replaces dequantize +
// sgemm, whose f32 pass cost more than the products themselves.
//
// Layout. A 512-bit accumulator holds 16 int32 lanes, one per (token t, row r) of a 4-token x
// 4-row tile, lane 4t + r. A block's 32 values are 8 "k-steps" of 4 bytes; vpdpbusd adds the 4
// products of a lane's k-step. So for k-step j the weight operand holds the 4 rows' 4 bytes
// (16 bytes, broadcast to the 4 lanes of 128 bits) and the activation operand each token's 4
// bytes repeated over the rows (one vpermd). Both sides are repacked into that order: the weights
// per call, 64 rows at a time by the thread that multiplies them (a 4 x 8 transpose of dwords per
// 4 rows and block, ~1/128 of the products' time at n = 512), the activations once per call.
//
// vpdpbusd multiplies unsigned by signed bytes: activations are stored as q + 128 (u8), weights
// as signed int8 (Q4_0: nibble - 8), and each block's accumulator starts at -128 * sum(w), so the
// int32 lane is exactly sum(q_act * q_w). The block's result is f32(int) * (d_w * d_act),
// accumulated over blocks with fma: ggml's products (the same exact integer dots, the same f32
// scale d_w * d_act), summed in another order than ggml's 8-lane partial sums (a few ulp).
//
// Compiled for AVX-512F/BW/VL/VNNI (attribute push below) and chosen at run time; no shared inline
// function or template is instantiated inside the push (see core/avx2_begin.h for why).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/cpu/qmatmul_kernels.h"
#include "quant/ggml_blocks.h"

namespace nnpipe::cpu::qk {

namespace {

constexpr int kQK = 32;       // values per block
constexpr int kRowGroup = 4;  // rows of a tile
constexpr int kTokGroup = 4;  // tokens of a tile
constexpr int kGroups = 4;    // row groups per kernel call: 16 rows x 4 tokens
constexpr int kChunkRows = 64;

// One block of 4 rows: q[k-step][row][4 bytes], the rows' scales and -128 * sum of their values.
struct WPack {
  int8_t q[8][4][4];
  float d[4];
  int32_t corr[4];
};
static_assert(sizeof(WPack) == 160);

// One block of 4 tokens: q[k-step][token][4 bytes] as q + 128, and the tokens' scales.
struct APack {
  uint8_t q[8][4][4];
  float d[4];
};
static_assert(sizeof(APack) == 144);

// Q4_K x Q8_K: a super-block of 256 values is 8 sub-blocks of 32 (8 k-steps each). Weights are
// the unsigned nibbles (vpdpbusd's unsigned operand, no offset), with each sub-block's 6-bit scale
// as int32 per row, the mins as int16 pairs (sub-blocks 2p, 2p + 1) per row for vpdpwssd
// against the activations' 32-value sums, and d, dmin.
struct WPackK {
  uint8_t q[8][8][4][4];
  int32_t sc[8][4];
  int16_t m[4][4][2];
  float d[4], dmin[4];
};
static_assert(sizeof(WPackK) == 1248);

// 4 tokens of a Q8_K super-block: q[sub-block][k-step][token][4], the 32-value sums as int16
// pairs (bsums[4p] + bsums[4p + 1], bsums[4p + 2] + bsums[4p + 3]) per token, and d.
struct APackK {
  int8_t q[8][8][4][4];
  int16_t bs[4][4][2];
  float d[4];
};
static_assert(sizeof(APackK) == 1104);

// Q6_K x Q8_K: the 6-bit values unsigned (0..63, vpdpbusd's unsigned operand) in the Q4_K
// order, each 16-value sub-block's int8 scale as int32 per row, and the scales as int16 pairs for
// the -32 offset: sum_s sc_s * (dot_s - 32 * bsum_s) = sum_s sc_s dot_s - 32 sum_s sc_s bsum_s.
struct WPack6 {
  uint8_t q[8][8][4][4];
  int32_t sc[16][4];
  int16_t scp[8][4][2];
  float d[4];
};
static_assert(sizeof(WPack6) == 1424);

// 4 tokens of a Q8_K super-block for Q6_K: as APackK with the 16-value sums in pairs.
struct APack6 {
  int8_t q[8][8][4][4];
  int16_t bs[8][4][2];
  float d[4];
};
static_assert(sizeof(APack6) == 1168);

// Q4_K's 8 scales and mins (ggml's get_scale_min_k4), compiled outside the AVX-512 region: the
// shared inline scale_min_k4 must not be instantiated there.
void scales_mins_k4(const uint8_t* scales, int sc[8], int m[8]) {
  for (int j = 0; j < 8; ++j) scale_min_k4(j, scales, sc[j], m[j]);
}

}  // namespace

}  // namespace nnpipe::cpu::qk

#if defined(__clang__)
#pragma clang attribute push(                                                      \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"))), \
    apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#endif

namespace nnpipe::cpu::qk {

namespace {

// 4 rows (or tokens) of 32 int8 values -> out[k-step][row][4 bytes]: a 4 x 8 transpose of dwords.
inline void interleave4(__m256i r0, __m256i r1, __m256i r2, __m256i r3, void* out) {
  const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
  const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  auto* o = static_cast<__m256i*>(out);
  _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));  // k-steps 0, 1
  _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));  // 2, 3
  _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));  // 4, 5
  _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));  // 6, 7
}

// Sum of 32 signed bytes.
inline int32_t sum_i8(__m256i v) {
  const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(-128)),
                                    _mm256_setzero_si256());  // sum(v + 128) in 4 u64
  const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return static_cast<int32_t>(_mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1)) - 128 * kQK;
}

inline float f16_to_f32(uint16_t h) {
  return _cvtsh_ss(h);
}

// Block b of a weight row as 32 signed bytes and its scale; zeros past the matrix.
inline __m256i weight_block(DType type, const uint8_t* row, int64_t b, float* d) {
  if (type == DType::kQ8_0) {
    const auto* blk = reinterpret_cast<const block_q8_0*>(row) + b;
    *d = f16_to_f32(blk->d);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs));
  }
  const auto* blk = reinterpret_cast<const block_q4_0*>(row) + b;  // Q4_0: q = nibble - 8
  *d = f16_to_f32(blk->d);
  const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk->qs));
  const __m128i m = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(p, m), hi = _mm_and_si128(_mm_srli_epi16(p, 4), m);
  return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

// Rows [r0, r0 + 4 * ngroups) of W -> packs[g * nb + b]; rows past `rows` are zero.
void pack_weights(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t r0,
                  int ngroups, int64_t nb, void* out) {
  auto* packs = static_cast<WPack*>(out);
  for (int g = 0; g < ngroups; ++g) {
    const uint8_t* rp[4];
    bool live[4];
    for (int r = 0; r < 4; ++r) {
      const int64_t row = r0 + 4 * g + r;
      live[r] = row < rows;
      rp[r] = live[r] ? w + static_cast<size_t>(row) * row_bytes : nullptr;
    }
    for (int64_t b = 0; b < nb; ++b) {
      WPack& p = packs[g * nb + b];
      __m256i v[4];
      for (int r = 0; r < 4; ++r) {
        if (!live[r]) {
          v[r] = _mm256_setzero_si256();
          p.d[r] = 0;
          p.corr[r] = 0;
          continue;
        }
        v[r] = weight_block(type, rp[r], b, &p.d[r]);
        p.corr[r] = -128 * sum_i8(v[r]);
      }
      interleave4(v[0], v[1], v[2], v[3], p.q);
    }
  }
}

// Tokens [t0, t0 + 4) of the Q8_0 activation rows -> packs[b]; tokens past n are zero.
void pack_activations(const uint8_t* act, size_t ab, int64_t n, int64_t t0, int64_t nb, void* out) {
  auto* packs = static_cast<APack*>(out);
  const __m256i bias = _mm256_set1_epi8(-128);
  for (int64_t b = 0; b < nb; ++b) {
    APack& p = packs[b];
    __m256i v[4];
    for (int t = 0; t < 4; ++t) {
      if (t0 + t >= n) {
        v[t] = bias;  // q = 0
        p.d[t] = 0;
        continue;
      }
      const auto* blk = reinterpret_cast<const block_q8_0*>(act + (t0 + t) * ab) + b;
      p.d[t] = f16_to_f32(blk->d);
      v[t] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs)), bias);
    }
    interleave4(v[0], v[1], v[2], v[3], p.q);
  }
}

// 16 bytes broadcast to the 4 lanes of 128 bits.
inline __m512i bcast(const void* p) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}

// Lane 4t + r takes token t's dword of a k-step: dword (k % 4) * 4 + t of a 64-byte half (idx),
// or dword t of 16 bytes (tok).
struct Lanes {
  __m512i tok, idx[4];
};
inline Lanes lanes() {
  const __m512i tok = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return {
      tok,
      {tok, _mm512_add_epi32(tok, _mm512_set1_epi32(4)),
       _mm512_add_epi32(tok, _mm512_set1_epi32(8)), _mm512_add_epi32(tok, _mm512_set1_epi32(12))}};
}

// The tile's accumulators (group g: rows 4g .., lane 4t + r) -> out[t * ostride + row].
inline void store_tile(const __m512 acc[kGroups], int ntok, int nrow, float* out, size_t ostride) {
  alignas(64) float res[kGroups][16];
  for (int g = 0; g < kGroups; ++g) _mm512_store_ps(res[g], acc[g]);
  for (int t = 0; t < ntok; ++t)
    for (int r = 0; r < nrow; ++r) out[t * ostride + r] = res[r / 4][4 * t + r % 4];
}

// 16 rows (4 groups of W, `wstride` packs apart) x 4 tokens over nb blocks -> out[t * ostride + r].
void tile_16x4(const void* wv, int64_t wstride, const void* av, int64_t nb, int ntok, int nrow,
               float* out, size_t ostride) {
  const auto* w = static_cast<const WPack*>(wv);
  const auto* a = static_cast<const APack*>(av);
  __m512 acc[kGroups];
  for (int g = 0; g < kGroups; ++g) acc[g] = _mm512_setzero_ps();
  const Lanes ln = lanes();
  for (int64_t b = 0; b < nb; ++b) {
    const APack& ap = a[b];
    const __m512i a0 = _mm512_loadu_si512(ap.q[0]), a1 = _mm512_loadu_si512(ap.q[4]);
    const __m512 da = _mm512_permutexvar_ps(ln.tok, _mm512_castps128_ps512(_mm_loadu_ps(ap.d)));
    __m512i s[kGroups];
    for (int g = 0; g < kGroups; ++g) s[g] = bcast(w[g * wstride + b].corr);
    for (int j = 0; j < 8; ++j) {
      const __m512i aj = _mm512_permutexvar_epi32(ln.idx[j & 3], j < 4 ? a0 : a1);
      for (int g = 0; g < kGroups; ++g)
        s[g] = _mm512_dpbusd_epi32(s[g], aj, bcast(w[g * wstride + b].q[j]));
    }
    for (int g = 0; g < kGroups; ++g) {
      const __m512 dw = _mm512_broadcast_f32x4(_mm_loadu_ps(w[g * wstride + b].d));
      acc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g]), _mm512_mul_ps(dw, da), acc[g]);
    }
  }
  store_tile(acc, ntok, nrow, out, ostride);
}

// Q4_K rows [r0, r0 + 4 * ngroups) -> packs[g * nb + b]; rows past `rows` are zero.
void pack_weights_k(DType, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t r0,
                    int ngroups, int64_t nb, void* out) {
  auto* packs = static_cast<WPackK*>(out);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int g = 0; g < ngroups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      WPackK& p = packs[g * nb + b];
      __m256i v[4][8];
      for (int r = 0; r < 4; ++r) {
        const int64_t row = r0 + 4 * g + r;
        if (row >= rows) {
          for (int j = 0; j < 8; ++j) {
            v[r][j] = _mm256_setzero_si256();
            p.sc[j][r] = 0;
            p.m[j / 2][r][j % 2] = 0;
          }
          p.d[r] = p.dmin[r] = 0;
          continue;
        }
        const auto* blk =
            reinterpret_cast<const block_q4_K*>(w + static_cast<size_t>(row) * row_bytes) + b;
        p.d[r] = f16_to_f32(blk->d);
        p.dmin[r] = f16_to_f32(blk->dmin);
        int sc[8], m[8];
        scales_mins_k4(blk->scales, sc, m);
        for (int j = 0; j < 8; ++j) {
          p.sc[j][r] = sc[j];
          p.m[j / 2][r][j % 2] = static_cast<int16_t>(m[j]);
        }
        for (int jj = 0; jj < 4; ++jj) {  // qs 32 jj.. : sub-block 2 jj low nibbles, 2 jj + 1 high
          const __m256i bits =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qs + 32 * jj));
          v[r][2 * jj] = _mm256_and_si256(bits, m4);
          v[r][2 * jj + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        }
      }
      for (int j = 0; j < 8; ++j) interleave4(v[0][j], v[1][j], v[2][j], v[3][j], p.q[j]);
    }
  }
}

// Tokens [t0, t0 + 4) of the Q8_K activation rows -> packs[b]; tokens past n are zero.
void pack_activations_k(const uint8_t* act, size_t ab, int64_t n, int64_t t0, int64_t nb,
                        void* out) {
  auto* packs = static_cast<APackK*>(out);
  for (int64_t b = 0; b < nb; ++b) {
    APackK& p = packs[b];
    const block_q8_K* blk[4];
    for (int t = 0; t < 4; ++t) {
      blk[t] = t0 + t < n ? reinterpret_cast<const block_q8_K*>(act + (t0 + t) * ab) + b : nullptr;
      p.d[t] = blk[t] ? blk[t]->d : 0.0f;
      for (int pr = 0; pr < 4; ++pr)
        for (int e = 0; e < 2; ++e)
          p.bs[pr][t][e] = blk[t] ? static_cast<int16_t>(blk[t]->bsums[4 * pr + 2 * e] +
                                                         blk[t]->bsums[4 * pr + 2 * e + 1])
                                  : int16_t{0};
    }
    for (int j = 0; j < 8; ++j) {
      __m256i v[4];
      for (int t = 0; t < 4; ++t)
        v[t] = blk[t] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[t]->qs + 32 * j))
                      : _mm256_setzero_si256();
      interleave4(v[0], v[1], v[2], v[3], p.q[j]);
    }
  }
}

// Q6_K rows [r0, r0 + 4 * ngroups) -> packs[g * nb + b]; rows past `rows` are zero. 32 values
// j = 4h + k of a row: ql[64h + 32(k & 1) ..] nibble k >> 1, with bits 2k.. of qh[32h ..] above.
void pack_weights_6(DType, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t r0,
                    int ngroups, int64_t nb, void* out) {
  auto* packs = static_cast<WPack6*>(out);
  const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
  for (int g = 0; g < ngroups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      WPack6& p = packs[g * nb + b];
      __m256i v[4][8];
      for (int r = 0; r < 4; ++r) {
        const int64_t row = r0 + 4 * g + r;
        if (row >= rows) {
          for (int j = 0; j < 8; ++j) v[r][j] = _mm256_setzero_si256();
          for (int sb = 0; sb < 16; ++sb) {
            p.sc[sb][r] = 0;
            p.scp[sb / 2][r][sb % 2] = 0;
          }
          p.d[r] = 0;
          continue;
        }
        const auto* blk =
            reinterpret_cast<const block_q6_K*>(w + static_cast<size_t>(row) * row_bytes) + b;
        p.d[r] = f16_to_f32(blk->d);
        for (int sb = 0; sb < 16; ++sb) {
          p.sc[sb][r] = blk->scales[sb];
          p.scp[sb / 2][r][sb % 2] = blk->scales[sb];
        }
        for (int h = 0; h < 2; ++h) {
          const __m256i ql0 =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h));
          const __m256i ql1 =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->ql + 64 * h + 32));
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk->qh + 32 * h));
          auto hi = [&](int sh) {
            return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, sh), m2), 4);
          };
          v[r][4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(0));
          v[r][4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(2));
          v[r][4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hi(4));
          v[r][4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hi(6));
        }
      }
      for (int j = 0; j < 8; ++j) interleave4(v[0][j], v[1][j], v[2][j], v[3][j], p.q[j]);
    }
  }
}

// Tokens [t0, t0 + 4) of the Q8_K activation rows -> Q6_K packs[b]; tokens past n are zero.
void pack_activations_6(const uint8_t* act, size_t ab, int64_t n, int64_t t0, int64_t nb,
                        void* out) {
  auto* packs = static_cast<APack6*>(out);
  for (int64_t b = 0; b < nb; ++b) {
    APack6& p = packs[b];
    const block_q8_K* blk[4];
    for (int t = 0; t < 4; ++t) {
      blk[t] = t0 + t < n ? reinterpret_cast<const block_q8_K*>(act + (t0 + t) * ab) + b : nullptr;
      p.d[t] = blk[t] ? blk[t]->d : 0.0f;
      for (int pr = 0; pr < 8; ++pr)
        for (int e = 0; e < 2; ++e)
          p.bs[pr][t][e] = blk[t] ? blk[t]->bsums[2 * pr + e] : int16_t{0};
    }
    for (int j = 0; j < 8; ++j) {
      __m256i v[4];
      for (int t = 0; t < 4; ++t)
        v[t] = blk[t] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[t]->qs + 32 * j))
                      : _mm256_setzero_si256();
      interleave4(v[0], v[1], v[2], v[3], p.q[j]);
    }
  }
}

// Q4_K: 16 rows x 4 tokens over nb super-blocks. As ggml_vec_dot_q4_K_q8_K: per super-block the
// exact int sum(scale_j * dot_j) times f32(d_act * d_w), and the exact int sum(m_j * bsum_j) times
// -(d_act * dmin_w) in a second accumulator; the two added at the end.
void tile_16x4_k(const void* wv, int64_t wstride, const void* av, int64_t nb, int ntok, int nrow,
                 float* out, size_t ostride) {
  const auto* w = static_cast<const WPackK*>(wv);
  const auto* a = static_cast<const APackK*>(av);
  __m512 acc[kGroups], acc_m[kGroups];
  for (int g = 0; g < kGroups; ++g) acc[g] = acc_m[g] = _mm512_setzero_ps();
  const Lanes ln = lanes();
  for (int64_t b = 0; b < nb; ++b) {
    const APackK& ap = a[b];
    __m512i sumi[kGroups];
    for (int g = 0; g < kGroups; ++g) sumi[g] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      const __m512i a0 = _mm512_loadu_si512(ap.q[j][0]), a1 = _mm512_loadu_si512(ap.q[j][4]);
      __m512i s[kGroups];
      for (int g = 0; g < kGroups; ++g) s[g] = _mm512_setzero_si512();
      for (int k = 0; k < 8; ++k) {
        const __m512i ak = _mm512_permutexvar_epi32(ln.idx[k & 3], k < 4 ? a0 : a1);
        for (int g = 0; g < kGroups; ++g)
          s[g] = _mm512_dpbusd_epi32(s[g], bcast(w[g * wstride + b].q[j][k]), ak);
      }
      for (int g = 0; g < kGroups; ++g)
        sumi[g] =
            _mm512_add_epi32(sumi[g], _mm512_mullo_epi32(s[g], bcast(w[g * wstride + b].sc[j])));
    }
    __m512i msum[kGroups];
    for (int g = 0; g < kGroups; ++g) msum[g] = _mm512_setzero_si512();
    for (int pr = 0; pr < 4; ++pr) {
      const __m512i bsp = _mm512_permutexvar_epi32(
          ln.tok,
          _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ap.bs[pr]))));
      for (int g = 0; g < kGroups; ++g)
        msum[g] = _mm512_dpwssd_epi32(msum[g], bsp, bcast(w[g * wstride + b].m[pr]));
    }
    const __m512 da = _mm512_permutexvar_ps(ln.tok, _mm512_castps128_ps512(_mm_loadu_ps(ap.d)));
    for (int g = 0; g < kGroups; ++g) {
      const WPackK& wp = w[g * wstride + b];
      const __m512 d = _mm512_mul_ps(da, _mm512_broadcast_f32x4(_mm_loadu_ps(wp.d)));
      const __m512 dmin = _mm512_mul_ps(da, _mm512_broadcast_f32x4(_mm_loadu_ps(wp.dmin)));
      acc[g] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[g]), acc[g]);
      acc_m[g] = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(msum[g]), acc_m[g]);
    }
  }
  for (int g = 0; g < kGroups; ++g) acc[g] = _mm512_add_ps(acc[g], acc_m[g]);
  store_tile(acc, ntok, nrow, out, ostride);
}

// Q6_K: 16 rows x 4 tokens over nb super-blocks. As ggml_vec_dot_q6_K_q8_K: per super-block the
// exact int sum_s sc_s * sum(q_w * q_act) with q_w = value - 32, times f32(d_act * d_w).
void tile_16x4_6(const void* wv, int64_t wstride, const void* av, int64_t nb, int ntok, int nrow,
                 float* out, size_t ostride) {
  const auto* w = static_cast<const WPack6*>(wv);
  const auto* a = static_cast<const APack6*>(av);
  __m512 acc[kGroups];
  for (int g = 0; g < kGroups; ++g) acc[g] = _mm512_setzero_ps();
  const Lanes ln = lanes();
  for (int64_t b = 0; b < nb; ++b) {
    const APack6& ap = a[b];
    __m512i sumi[kGroups];
    for (int g = 0; g < kGroups; ++g) sumi[g] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      const __m512i ah[2] = {_mm512_loadu_si512(ap.q[j][0]), _mm512_loadu_si512(ap.q[j][4])};
      for (int h = 0; h < 2; ++h) {  // sub-block 2j + h: k-steps 4h .. 4h + 3
        __m512i s[kGroups];
        for (int g = 0; g < kGroups; ++g) s[g] = _mm512_setzero_si512();
        for (int k = 0; k < 4; ++k) {
          const __m512i ak = _mm512_permutexvar_epi32(ln.idx[k], ah[h]);
          for (int g = 0; g < kGroups; ++g)
            s[g] = _mm512_dpbusd_epi32(s[g], bcast(w[g * wstride + b].q[j][4 * h + k]), ak);
        }
        for (int g = 0; g < kGroups; ++g)
          sumi[g] = _mm512_add_epi32(
              sumi[g], _mm512_mullo_epi32(s[g], bcast(w[g * wstride + b].sc[2 * j + h])));
      }
    }
    __m512i msum[kGroups];
    for (int g = 0; g < kGroups; ++g) msum[g] = _mm512_setzero_si512();
    for (int pr = 0; pr < 8; ++pr) {
      const __m512i bsp = _mm512_permutexvar_epi32(
          ln.tok,
          _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ap.bs[pr]))));
      for (int g = 0; g < kGroups; ++g)
        msum[g] = _mm512_dpwssd_epi32(msum[g], bsp, bcast(w[g * wstride + b].scp[pr]));
    }
    const __m512 da = _mm512_permutexvar_ps(ln.tok, _mm512_castps128_ps512(_mm_loadu_ps(ap.d)));
    for (int g = 0; g < kGroups; ++g) {
      const __m512i isum = _mm512_sub_epi32(sumi[g], _mm512_slli_epi32(msum[g], 5));
      const __m512 d =
          _mm512_mul_ps(da, _mm512_broadcast_f32x4(_mm_loadu_ps(w[g * wstride + b].d)));
      acc[g] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc[g]);
    }
  }
  store_tile(acc, ntok, nrow, out, ostride);
}

}  // namespace

}  // namespace nnpipe::cpu::qk

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

namespace nnpipe::cpu::qk {

namespace {

// A weight type's packers and tile kernel; packs are `wbytes` / `abytes` per block of `qk` values.
struct Kernels {
  int64_t qk;
  size_t wbytes, abytes;
  void (*pack_w)(DType, const uint8_t*, size_t, int64_t, int64_t, int, int64_t, void*);
  void (*pack_a)(const uint8_t*, size_t, int64_t, int64_t, int64_t, void*);
  void (*tile)(const void*, int64_t, const void*, int64_t, int, int, float*, size_t);
};

Kernels kernels_for(DType type) {
  if (type == DType::kQ6_K)
    return {256, sizeof(WPack6), sizeof(APack6), pack_weights_6, pack_activations_6, tile_16x4_6};
  if (type == DType::kQ4_K)
    return {256, sizeof(WPackK), sizeof(APackK), pack_weights_k, pack_activations_k, tile_16x4_k};
  return {kQK, sizeof(WPack), sizeof(APack), pack_weights, pack_activations, tile_16x4};
}

void gemm_any(DType type, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t cols,
              const uint8_t* act, size_t ab, int64_t n, float* y, int threads) {
  const Kernels k = kernels_for(type);
  const int64_t nb = cols / k.qk;
  const int64_t ntg = (n + kTokGroup - 1) / kTokGroup;
  // Activations: once, tokens in groups of 4.
  const size_t a_group = static_cast<size_t>(nb) * k.abytes;
  thread_local std::vector<uint8_t> abuf;
  abuf.resize(static_cast<size_t>(ntg) * a_group + 64);
  uint8_t* ap = abuf.data();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && ntg > 1)
  for (int64_t tg = 0; tg < ntg; ++tg) k.pack_a(act, ab, n, tg * kTokGroup, nb, ap + tg * a_group);

  // Weights: chunks of 64 rows, each repacked by the thread that multiplies it with every token.
  constexpr int kChunkGroups = kChunkRows / kRowGroup;
  const int64_t nchunks = (rows + kChunkRows - 1) / kChunkRows;
  const size_t w_group = static_cast<size_t>(nb) * k.wbytes;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    // Zeroed: a chunk's groups past its last row are multiplied (not stored) and must be numbers.
    std::vector<uint8_t> wp(kChunkGroups * w_group, 0);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t r0 = c * kChunkRows;
      const int64_t nr = std::min<int64_t>(kChunkRows, rows - r0);
      const int ngroups = static_cast<int>((nr + kRowGroup - 1) / kRowGroup);
      k.pack_w(type, w, row_bytes, rows, r0, ngroups, nb, wp.data());
      for (int64_t tg = 0; tg < ntg; ++tg) {
        const int ntok = static_cast<int>(std::min<int64_t>(kTokGroup, n - tg * kTokGroup));
        for (int sg = 0; sg * kGroups < ngroups; ++sg) {
          const int64_t rs = r0 + sg * kGroups * kRowGroup;
          const int nrow = static_cast<int>(std::min<int64_t>(kGroups * kRowGroup, rows - rs));
          k.tile(wp.data() + sg * kGroups * w_group, nb, ap + tg * a_group, nb, ntok, nrow,
                 y + tg * kTokGroup * rows + rs, static_cast<size_t>(rows));
        }
      }
    }
  }
}

}  // namespace

bool vnni_gemm_supported(DType weight) {
  return weight == DType::kQ8_0 || weight == DType::kQ4_0 || weight == DType::kQ4_K ||
         weight == DType::kQ6_K;
}

void vnni_gemm(DType weight, const uint8_t* w, size_t row_bytes, int64_t rows, int64_t cols,
               const uint8_t* act, size_t act_stride, int64_t n, float* y, int threads) {
  gemm_any(weight, w, row_bytes, rows, cols, act, act_stride, n, y, threads);
}

}  // namespace nnpipe::cpu::qk
