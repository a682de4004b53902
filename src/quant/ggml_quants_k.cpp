// K-quant dequantization. Each value is (d*sc)*q - (dmin*m) (Q4_K/Q5_K) or (d*sc)*q (Q6_K) with the
// two products rounded to f32 first, the same operation order as gguf-py, so results are equal.
#include "quant/ggml_quants_k.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"

namespace nnpipe {

namespace {

// Groups whose largest |x| is below this quantize to zero (llama.cpp's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round half to even, as llama.cpp's nearest_int (valid for |v| < 2^22).
int nearest(float v) {
  return static_cast<int>(std::nearbyint(v));
}

float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// 6-bit scale and min of sub-block j (0..7) from the 12 packed scale bytes.
void scale_min_k4(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K and Q5_K share the header (d, dmin, scales) and the nibble order: qs byte 32*p + l holds
// element 64*p + l in its low nibble and 64*p + 32 + l in its high one. Q5_K adds qh, whose bit s
// of byte l is the fifth bit of element 32*s + l.
void dequant_k45(const uint8_t* b, float* y, const uint8_t* qh, const uint8_t* qs) {
  const float d = get_f16(b);
  const float dmin = get_f16(b + 2);
  const uint8_t* scales = b + 4;
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    scale_min_k4(s, scales, sc, m);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(m);
    const uint8_t* q = qs + 32 * (s / 2);
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

}  // namespace

// Q6_K: a 6-bit signed grid per 16-value group (fit_signed_scale), then the 16 group scales are
// themselves quantized to int8 against one f16 super-scale d, and the values re-rounded to the
// scale actually stored.
void quant_block_q6_k(const float* x, uint8_t* y) {
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
  std::memset(y, 0, 210);
  if (max_abs_scale < kGroupMaxEps) return;  // all zero: d = +0
  const float iscale = -128.0f / max_scale;
  const uint16_t dh = f32_to_f16(1.0f / iscale);
  std::memcpy(y + 208, &dh, 2);
  const float d = f16_to_f32(dh);
  int8_t* sc = reinterpret_cast<int8_t*>(y + 192);
  for (int g = 0; g < 16; ++g)
    sc[g] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[g])));
  for (int g = 0; g < 16; ++g) {
    const float dg = d * static_cast<float>(sc[g]);
    if (dg == 0) continue;  // keeps the group's first-pass codes, as the reference does
    for (int i = 16 * g; i < 16 * g + 16; ++i)
      L[i] = static_cast<int8_t>(std::clamp(nearest(x[i] / dg), -32, 31) + 32);
  }
  // Pack per the layout that dequant_block_q6_k reads.
  uint8_t* ql = y;
  uint8_t* qh = y + 128;
  for (int c = 0; c < 2; ++c)
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 64; ++t) {
        const int q = L[128 * c + 64 * h + t];
        ql[64 * c + t] |= static_cast<uint8_t>((q & 0xF) << (4 * h));
        qh[32 * c + t % 32] |= static_cast<uint8_t>((q >> 4) << (2 * (2 * h + t / 32)));
      }
}

void dequant_block_q4_k(const uint8_t* b, float* y) {
  dequant_k45(b, y, nullptr, b + 16);
}

void dequant_block_q5_k(const uint8_t* b, float* y) {
  dequant_k45(b, y, b + 16, b + 48);
}

// Q6_K: ql[128], qh[64], scales int8[16], d. Element 128*c + 64*h + t (t < 64) takes nibble h of
// ql[64*c + t] and, from qh[32*c + t%32], the two bits at 2*(2*h + t/32).
void dequant_block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = get_f16(b + 208);
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
