// K-quants. Dequantization: each value is (d*sc)*q - (dmin*m) (Q4_K/Q5_K) or (d*sc)*q (Q6_K) with
// the products rounded to f32 first, gguf-py's operation order, so results are equal to its.
// Quantization: llama.cpp's reference quantizers (quantize_row_q{4,5,6}_K_ref, what llama-quantize
// runs without an importance matrix) with their f32 operation order, initial values, rounding
// (ggml_nearest_int, also for out-of-range quotients) and packing kept, so the bytes are equal to
// llama.cpp's; tests/conformance/test_quants.py compares them with ggml_quantize_chunk.
#include "quant/ggml_quants_k.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/half.h"
#include "quant/ggml_rounding.h"

namespace nnpipe {

namespace {

// Groups whose largest |x| is below this quantize to zero (llama.cpp's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// llama.cpp's nearest_int (round half to even, and its bit-trick result outside +-2^22, e.g. for
// the quotients of inf/NaN scales), so that even degenerate blocks match.
int nearest(float v) {
  return ggml_nearest_int(v);
}

// Q4_K and Q5_K share the header (d, dmin, scales) and the nibble order: qs byte 32*p + l holds
// element 64*p + l in its low nibble and 64*p + 32 + l in its high one. Q5_K adds qh, whose bit s
// of byte l is the fifth bit of element 32*s + l (qh null for Q4_K).
template <typename Block>
void dequant_k45(const Block* b, float* y, const uint8_t* qh) {
  const float d = f16_to_f32(b->d);
  const float dmin = f16_to_f32(b->dmin);
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    scale_min_k4(s, b->scales, sc, m);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(m);
    const uint8_t* q = b->qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0xF;
      if (qh) v |= ((qh[l] >> s) & 1) << 4;
      y[32 * s + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// Scale for n values on the signed grid [-nmax, nmax-1] (stored as L = l + nmax): starts from the
// grid that maps the largest-magnitude value to -nmax, then tries 18 slightly stretched or shrunk
// grids, keeping the one with the best x^2-weighted least-squares fit (llama.cpp's make_qx_quants
// with rmse_type 1 and no importance weights).
float fit_signed_scale(const float* x, int n, int nmax, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t{0});
    return 0.0f;
  }
  auto level = [&](float iscale, int i) {
    return std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
  };
  // Weighted sums for a grid: sum w*x*l and sum w*l*l with w = x^2.
  auto sums = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(level(iscale, i));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
  };
  auto store = [&](float iscale) {
    for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(level(iscale, i) + nmax);
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx, suml2;
  sums(iscale, sumlx, suml2);
  store(iscale);
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sums(iscale, sumlx, suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      store(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Affine fit of n values to codes [0, nmax], x ~ scale * L - neg_min with neg_min >= 0: starts
// from the min..max grid, then tries nstep + 1 stretched grids, each with its weighted
// least-squares scale and min, keeping the lowest weighted squared error (llama.cpp's
// make_qkx2_quants, use_mad false).
float fit_affine(const float* x, const float* w, int n, int nmax, float rmin, float rdelta,
                 int nstep, uint8_t* L, float& neg_min) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, uint8_t{0});
    neg_min = -min;
    return 0.0f;
  }
  auto code = [&](float iscale, int i) {
    return static_cast<uint8_t>(std::clamp(nearest(iscale * (x[i] - min)), 0, nmax));
  };
  auto error = [&](float scale, float mn, const uint8_t* q) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = scale * static_cast<float>(q[i]) + mn - x[i];
      e += w[i] * (diff * diff);
    }
    return e;
  };
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  for (int i = 0; i < n; ++i) L[i] = code(iscale, i);
  float best_error = error(scale, min, L);
  uint8_t aux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      aux[i] = code(iscale, i);
      const float l = static_cast<float>(aux[i]);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {  // the grid must reach down to 0
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      const float cur_error = error(this_scale, this_min, aux);
      if (cur_error < best_error) {
        std::copy(aux, aux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  neg_min = -min;
  return scale;
}

// Q4_K (kBits 4) / Q5_K (kBits 5): per 32-value sub-block an affine fit weighted by
// rms(x) + |x|, then the 8 scales and 8 mins quantized to 6 bits against f16 d and dmin, and the
// values re-rounded to what is actually stored.
template <int kBits>
void quant_k45(const float* x, uint8_t* y) {
  using Block = std::conditional_t<kBits == 4, block_q4_K, block_q5_K>;
  auto* b = reinterpret_cast<Block*>(y);
  constexpr int kMaxQ = (1 << kBits) - 1;
  uint8_t L[kQK_K];
  float scales[8], mins[8], w[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    scales[j] = kBits == 4 ? fit_affine(xs, w, 32, kMaxQ, -1.0f, 0.1f, 20, L + 32 * j, mins[j])
                           : fit_affine(xs, w, 32, kMaxQ, -0.5f, 0.1f, 15, L + 32 * j, mins[j]);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  std::memset(b, 0, sizeof(Block));
  uint8_t* s = b->scales;
  for (int j = 0; j < 8; ++j) {
    // uint8_t wrap before the min, as the reference does (only reachable with a negative fit).
    const uint8_t ls = std::min<uint8_t>(63, static_cast<uint8_t>(nearest(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(nearest(inv_min * mins[j])));
    if (j < 4) {
      s[j] = ls;
      s[j + 4] = lm;
    } else {  // low 4 bits in byte j + 4, high 2 bits in the top of bytes j - 4 and j
      s[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      s[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      s[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  const uint16_t dh = f32_to_f16(max_scale / 63.0f), mh = f32_to_f16(max_min / 63.0f);
  b->d = dh;
  b->dmin = mh;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, s, sc, m);
    const float d = f16_to_f32(dh) * static_cast<float>(sc);
    if (d == 0) continue;  // keeps the first-pass codes, as the reference does
    const float dm = f16_to_f32(mh) * static_cast<float>(m);
    for (int l = 32 * j; l < 32 * j + 32; ++l)
      L[l] = static_cast<uint8_t>(std::clamp(nearest((x[l] + dm) / d), 0, kMaxQ));
  }
  // Pack per the layout dequant_k45 reads.
  for (int e = 0; e < kQK_K; ++e) {
    const int sb = e / 32, l = e % 32;
    b->qs[32 * (sb / 2) + l] |= static_cast<uint8_t>((L[e] & 0xF) << (4 * (sb % 2)));
    if constexpr (kBits == 5) b->qh[l] |= static_cast<uint8_t>((L[e] >> 4) << sb);
  }
}

}  // namespace

void quant_block_q4_k(const float* x, uint8_t* y) {
  quant_k45<4>(x, y);
}
void quant_block_q5_k(const float* x, uint8_t* y) {
  quant_k45<5>(x, y);
}

// Q6_K: a 6-bit signed grid per 16-value group (fit_signed_scale), then the 16 group scales are
// themselves quantized to int8 against one f16 super-scale d, and the values re-rounded to the
// scale actually stored.
void quant_block_q6_k(const float* x, uint8_t* y) {
  auto* b = reinterpret_cast<block_q6_K*>(y);
  int8_t L[kQK_K];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int g = 0; g < 16; ++g) {
    scales[g] = fit_signed_scale(x + 16 * g, 16, 32, L + 16 * g);
    if (std::fabs(scales[g]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[g]);
      max_scale = scales[g];
    }
  }
  std::memset(b, 0, sizeof(block_q6_K));
  if (max_abs_scale < kGroupMaxEps) return;  // all zero: d = +0
  const float iscale = -128.0f / max_scale;
  const uint16_t dh = f32_to_f16(1.0f / iscale);
  b->d = dh;
  const float d = f16_to_f32(dh);
  int8_t* sc = b->scales;
  for (int g = 0; g < 16; ++g)
    sc[g] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[g])));
  for (int g = 0; g < 16; ++g) {
    const float dg = d * static_cast<float>(sc[g]);
    if (dg == 0) continue;  // keeps the group's first-pass codes, as the reference does
    for (int i = 16 * g; i < 16 * g + 16; ++i)
      L[i] = static_cast<int8_t>(std::clamp(nearest(x[i] / dg), -32, 31) + 32);
  }
  // Pack per the layout that dequant_block_q6_k reads.
  uint8_t* ql = b->ql;
  uint8_t* qh = b->qh;
  for (int c = 0; c < 2; ++c)
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 64; ++t) {
        const int q = L[128 * c + 64 * h + t];
        ql[64 * c + t] |= static_cast<uint8_t>((q & 0xF) << (4 * h));
        qh[32 * c + t % 32] |= static_cast<uint8_t>((q >> 4) << (2 * (2 * h + t / 32)));
      }
}

void dequant_block_q4_k(const uint8_t* p, float* y) {
  dequant_k45(reinterpret_cast<const block_q4_K*>(p), y, nullptr);
}

void dequant_block_q5_k(const uint8_t* p, float* y) {
  const auto* b = reinterpret_cast<const block_q5_K*>(p);
  dequant_k45(b, y, b->qh);
}

// Q6_K: ql[128], qh[64], scales int8[16], d. Element 128*c + 64*h + t (t < 64) takes nibble h of
// ql[64*c + t] and, from qh[32*c + t%32], the two bits at 2*(2*h + t/32).
void dequant_block_q6_k(const uint8_t* p, float* y) {
  const auto* b = reinterpret_cast<const block_q6_K*>(p);
  const uint8_t* ql = b->ql;
  const uint8_t* qh = b->qh;
  const int8_t* sc = b->scales;
  const float d = f16_to_f32(b->d);
  float ds[16];
  for (int i = 0; i < 16; ++i) ds[i] = d * static_cast<float>(sc[i]);
  for (int c = 0; c < 2; ++c)
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 64; ++t) {
        const int e = 128 * c + 64 * h + t;
        const int lo = (ql[64 * c + t] >> (4 * h)) & 0xF;
        const int hi = (qh[32 * c + t % 32] >> (2 * (2 * h + t / 32))) & 3;
        y[e] = ds[e / 16] * static_cast<float>((lo | (hi << 4)) - 32);
      }
}

}  // namespace nnpipe
