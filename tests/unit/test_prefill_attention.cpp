// The prompt attention kernels (backend/cpu/prefill_attention.h): the AVX-512 group kernel gives
// the AVX2 kernel's bits for every query group, head and cache length, probabilities that
// underflow to exact zeros included.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/prefill_attention.h"
#include "core/half.h"

namespace nnpipe::cpu {
namespace {

std::vector<uint16_t> random_f16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_f16(dist(rng));
  return v;
}

TEST(PrefillAttention, Avx512GroupKernelEqualsAvx2) {
  if (!prefill_attention_avx512_available(64)) GTEST_SKIP() << "no AVX-512F on this CPU";
  struct Case {
    int64_t past, n, D;
    float scale;
  };
  for (const Case c : {Case{0, 37, 64, 0.125f}, Case{5, 9, 64, 0.125f}, Case{40, 6, 128, 0.1f},
                       Case{3, 21, 16, 0.25f}, Case{17, 30, 64, 40.0f}}) {
    PrefillShape s;
    s.past = c.past, s.n = c.n, s.H = 4, s.KV = 2, s.D = c.D;
    s.L = c.past + c.n, s.Lp = (s.L + 15) / 16 * 16, s.scale = c.scale;
    const int64_t kvd = s.KV * s.D, HD = s.H * s.D;
    const std::vector<uint16_t> K = random_f16(static_cast<size_t>(s.L * kvd), 1),
                                V = random_f16(static_cast<size_t>(s.L * kvd), 2);
    std::vector<float> kt(static_cast<size_t>(s.KV * s.D * s.Lp)),
        vf(static_cast<size_t>(s.L * kvd));
    std::fill(kt.begin(), kt.end(), NAN);
    // Two calls (blocks of 8 rows and a tail in each) as the driver splits the rows.
    prefill_expand_kv(K.data(), V.data(), s, kt.data(), vf.data(), 0, s.L / 2);
    prefill_expand_kv(K.data(), V.data(), s, kt.data(), vf.data(), s.L / 2, s.L);
    for (int64_t j = 0; j < s.Lp; ++j)
      for (int64_t col = 0; col < kvd; ++col) {
        ASSERT_EQ(kt[col * s.Lp + j], j < s.L ? f16_to_f32(K[j * kvd + col]) : 0.0f)
            << "K^T " << col << "," << j;
        if (j < s.L) {
          ASSERT_EQ(vf[j * kvd + col], f16_to_f32(V[j * kvd + col]));
        }
      }
    std::mt19937 rng(3);
    std::normal_distribution<float> dist;
    std::vector<float> q(static_cast<size_t>(s.n * HD));
    for (float& x : q) x = dist(rng);
    std::vector<float> a(q.size(), NAN), b(q.size(), NAN),
        scratch(static_cast<size_t>(4 * (s.Lp + s.D)));
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i0 = 0; i0 < s.n; i0 += 4) {
        const int nq = static_cast<int>(std::min<int64_t>(4, s.n - i0));
        prefill_attention_group(a.data(), q.data(), kt.data(), vf.data(), s, h, i0, nq,
                                scratch.data());
        prefill_attention_group_avx512(b.data(), q.data(), kt.data(), vf.data(), s, h, i0, nq,
                                       scratch.data());
      }
    for (float x : a) ASSERT_TRUE(std::isfinite(x));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0)
        << "past " << c.past << " n " << c.n << " D " << c.D;
  }
}

// The softmax of every attention path: the scalar, AVX2 and AVX-512 versions give the same bits
// for every length (vector tails included), and each probability is within one f16 step of the
// exactly computed one (exp's <= 2 ulp cannot move an f16 rounding further).
TEST(PrefillAttention, SoftmaxVersionsAgreeAndMatchDoubleReference) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist;
  for (int64_t len : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 515}) {
    std::vector<float> x(static_cast<size_t>(len));
    for (float& v : x) v = dist(rng) * 6.0f;
    if (len > 3) x[2] = -200.0f;    // underflows to exactly 0
    if (len > 5) x[4] = -INFINITY;  // a masked score
    std::vector<float> a = x;
    softmax_f16_ref(a.data(), len);
    if (prefill_attention_available(64)) {
      std::vector<float> b = x;
      softmax_f16_avx2(b.data(), len);
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << "avx2, len " << len;
    }
    if (prefill_attention_avx512_available(64)) {
      std::vector<float> c = x;
      softmax_f16_avx512(c.data(), len);
      EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0) << "avx512, len " << len;
    }
    double mx = -INFINITY, sum = 0;
    for (float v : x) mx = std::max(mx, double(v));
    for (float v : x) sum += std::exp(double(v) - mx);
    for (int64_t j = 0; j < len; ++j) {
      const double want = std::exp(double(x[j]) - mx) / sum;
      const double step =
          want > 0 ? std::max(std::ldexp(1.0, -24), std::ldexp(1.0, std::ilogb(want) - 10))
                   : std::ldexp(1.0, -24);
      EXPECT_LE(std::fabs(a[j] - want), step) << "len " << len << " j " << j;
    }
    if (len > 5) {
      EXPECT_EQ(a[2], 0.0f);
      EXPECT_EQ(a[4], 0.0f);
    }
  }
  float nan_row[3] = {1.0f, NAN, 0.5f};  // a NaN score makes NaN, as std::exp would
  softmax_f16_ref(nan_row, 3);
  EXPECT_TRUE(std::isnan(nan_row[1]));
}

}  // namespace
}  // namespace nnpipe::cpu
