// K-quant dequantization. Each value is (d*sc)*q - (dmin*m) (Q4_K/Q5_K) or (d*sc)*q (Q6_K) with the
// two products rounded to f32 first, the same operation order as gguf-py, so results are equal.
#include "quant/ggml_quants_k.h"

#include <cstring>

#include "core/half.h"

namespace nnpipe {

namespace {

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

}  // namespace

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
