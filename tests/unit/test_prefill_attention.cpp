// The prompt attention kernels (backend/cpu/prefill_attention.h): the AVX-512 group kernel gives
// the AVX2 kernel's bits for every query group, head and cache length, probabilities that
// underflow to exact zeros included.
#include <gtest/gtest.h>

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
    prefill_expand_kv(K.data(), V.data(), s, kt.data(), vf.data(), 0, s.L);
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

}  // namespace
}  // namespace nnpipe::cpu
