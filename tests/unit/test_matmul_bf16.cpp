// The AVX-512 BF16 kernels of the frozen base (backend/cpu/matmul_bf16.cpp) against a double
// reference on the bf16-rounded operand. Bound per output: |got - ref| <= (K + 8) 2^-24 S, with
// S = sum_k |bf16(a_k)| |w_k| (+ |dx before| for the accumulating dx): every one of the <= K + 2
// f32 additions of a sequential sum rounds by at most 2^-24 of a partial sum <= S, and the
// products of two bf16 values are exact in f32. A wrongly rounded operand (truncation instead of
// nearest even: ~2^-9 per value), a wrong element or a lost K block exceeds it by orders.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/matmul_bf16.h"
#include "core/half.h"

using namespace nnpipe;

namespace {

struct Mat {
  std::vector<float> x;     // (N, K) f32 operand
  std::vector<uint16_t> w;  // (O, I) bf16
};

Mat random_mat(int64_t n, int64_t k, int64_t o, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  Mat m;
  m.x.resize(static_cast<size_t>(n * k));
  m.w.resize(static_cast<size_t>(o * in));
  for (float& v : m.x) v = d(rng);
  for (uint16_t& v : m.w) v = f32_to_bf16(d(rng) * 0.05f);
  return m;
}

double rx(const std::vector<float>& x, size_t i) {
  return bf16_to_f32(f32_to_bf16(x[i]));
}

#define REQUIRE_BF16()                               \
  do {                                               \
    if (!cpu::bf16_gemm_available()) {               \
      GTEST_SKIP() << "no AVX-512 BF16 on this CPU"; \
    }                                                \
  } while (0)

// y (N, O) = bf16(x) W^T on shapes with every tile edge: N = 1, 3, 17 and 49, 50 (token panels
// of 48 and a partial one), O not a multiple of the 8-row tile, I odd, and I past one K block.
TEST(Bf16Gemm, ForwardWithinBoundOfDoubleReference) {
  REQUIRE_BF16();
  struct S {
    int64_t n, o, in;
  };
  for (const S s :
       {S{1, 5, 7}, S{3, 17, 33}, S{17, 50, 64}, S{49, 9, 1031}, S{50, 130, 2050}, S{17, 3, 1}}) {
    const Mat m = random_mat(s.n, s.in, s.o, s.in, 7);
    std::vector<float> y(static_cast<size_t>(s.n * s.o), -1.0f);
    cpu::bf16_matmul(y.data(), m.x.data(), s.n, m.w.data(), s.o, s.in);
    double worst = 0;
    bool above_unrounded = false;
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t c = 0; c < s.o; ++c) {
        double ref = 0, mag = 0, exact = 0;
        for (int64_t k = 0; k < s.in; ++k) {
          const double w = bf16_to_f32(m.w[static_cast<size_t>(c * s.in + k)]);
          const size_t xi = static_cast<size_t>(i * s.in + k);
          ref += rx(m.x, xi) * w;
          exact += m.x[xi] * w;
          mag += std::fabs(rx(m.x, xi) * w);
        }
        const double bound = static_cast<double>(s.in + 8) * 0x1p-24 * mag;
        const double err = std::fabs(y[static_cast<size_t>(i * s.o + c)] - ref);
        worst = std::max(worst, err / std::max(bound, 1e-300));
        if (std::fabs(y[static_cast<size_t>(i * s.o + c)] - exact) > bound) above_unrounded = true;
      }
    EXPECT_LE(worst, 1.0) << "n " << s.n << " o " << s.o << " in " << s.in;
    // The bound separates the rounded operand from the unrounded one: x really is rounded.
    if (s.in >= 7) {
      EXPECT_TRUE(above_unrounded) << "n " << s.n << " in " << s.in;
    }
  }
}

// dx (N, I) += bf16(dout) (N, O) W: O is the reduction (odd, past one K block), I the panel
// columns (tails of 16 and 48), dx pre-filled to check that it accumulates.
TEST(Bf16Gemm, InputGradientWithinBoundOfDoubleReference) {
  REQUIRE_BF16();
  struct S {
    int64_t n, o, in;
  };
  for (const S s :
       {S{1, 7, 5}, S{3, 33, 17}, S{17, 64, 50}, S{9, 1031, 49}, S{13, 2050, 130}, S{17, 1, 3}}) {
    const Mat m = random_mat(s.n, s.o, s.o, s.in, 11);
    std::vector<float> dx0(static_cast<size_t>(s.n * s.in));
    std::mt19937 rng(3);
    std::normal_distribution<float> d;
    for (float& v : dx0) v = d(rng);
    std::vector<float> dx = dx0;
    cpu::bf16_matmul_dx(dx.data(), m.x.data(), s.n, m.w.data(), s.o, s.in);
    double worst = 0;
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t c = 0; c < s.in; ++c) {
        const size_t di = static_cast<size_t>(i * s.in + c);
        double ref = dx0[di], mag = std::fabs(dx0[di]);
        for (int64_t k = 0; k < s.o; ++k) {
          const double p = rx(m.x, static_cast<size_t>(i * s.o + k)) *
                           bf16_to_f32(m.w[static_cast<size_t>(k * s.in + c)]);
          ref += p;
          mag += std::fabs(p);
        }
        const double bound = static_cast<double>(s.o + 8) * 0x1p-24 * mag;
        worst = std::max(worst, std::fabs(dx[di] - ref) / std::max(bound, 1e-300));
      }
    EXPECT_LE(worst, 1.0) << "n " << s.n << " o " << s.o << " in " << s.in;
  }
}

// Ties round to even, as torch's bf16 conversion: with W = I, y = bf16(x) exactly.
TEST(Bf16Gemm, OperandRoundsToNearestEven) {
  REQUIRE_BF16();
  const float xs[] = {1.0f + 0x1p-8f,
                      1.0f + 3 * 0x1p-8f,
                      -1.0f - 0x1p-8f,
                      1.0f + 0x1p-8f + 0x1p-20f,
                      3.0e38f,
                      -2.5e-30f,
                      0.0f,
                      -7.0f};
  const int64_t k = 8;
  std::vector<uint16_t> eye(static_cast<size_t>(k * k), 0);
  for (int64_t i = 0; i < k; ++i) eye[static_cast<size_t>(i * k + i)] = f32_to_bf16(1.0f);
  std::vector<float> y(k);
  cpu::bf16_matmul(y.data(), xs, 1, eye.data(), k, k);
  for (int64_t i = 0; i < k; ++i)
    EXPECT_EQ(y[static_cast<size_t>(i)], bf16_to_f32(f32_to_bf16(xs[i]))) << "x " << xs[i];
  EXPECT_EQ(y[0], 1.0f);            // 1 + 2^-8 ties to 1 (even), not 1 + 2^-7
  EXPECT_EQ(y[1], 1.0f + 0x1p-6f);  // 1 + 3 2^-8 ties up to the even 1 + 2^-6
  EXPECT_EQ(y[3], 1.0f + 0x1p-7f);  // past the tie: up
}

// The same bits for any thread count, and a row's bits do not depend on the other rows.
TEST(Bf16Gemm, ThreadCountAndBatchInvariant) {
  REQUIRE_BF16();
  const int64_t n = 37, o = 200, in = 1500;
  const Mat m = random_mat(n, in, o, in, 5);
  const Mat g = random_mat(n, o, o, in, 6);
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> ys, dxs;
  for (int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    std::vector<float> y(static_cast<size_t>(n * o)), dx(static_cast<size_t>(n * in), 0.5f);
    cpu::bf16_matmul(y.data(), m.x.data(), n, m.w.data(), o, in);
    cpu::bf16_matmul_dx(dx.data(), g.x.data(), n, m.w.data(), o, in);
    ys.push_back(y);
    dxs.push_back(dx);
  }
  omp_set_num_threads(saved);
  for (size_t t = 1; t < ys.size(); ++t) {
    EXPECT_EQ(0, std::memcmp(ys[t].data(), ys[0].data(), ys[0].size() * 4)) << t + 1 << " threads";
    EXPECT_EQ(0, std::memcmp(dxs[t].data(), dxs[0].data(), dxs[0].size() * 4))
        << t + 1 << " threads";
  }
  for (int64_t r : {int64_t{0}, int64_t{20}, n - 1}) {
    std::vector<float> y1(static_cast<size_t>(o)), dx1(static_cast<size_t>(in), 0.5f);
    cpu::bf16_matmul(y1.data(), m.x.data() + r * in, 1, m.w.data(), o, in);
    cpu::bf16_matmul_dx(dx1.data(), g.x.data() + r * o, 1, m.w.data(), o, in);
    EXPECT_EQ(0, std::memcmp(y1.data(), ys[0].data() + r * o, y1.size() * 4)) << "row " << r;
    EXPECT_EQ(0, std::memcmp(dx1.data(), dxs[0].data() + r * in, dx1.size() * 4)) << "row " << r;
  }
}

// The backend's kTorchBf16: the kernels where the CPU has them and the emulated path (operand
// rounded, then f32 sgemm) agree to f32 summation-order noise; kTorch (unrounded) does not.
TEST(Bf16Gemm, BackendKernelAndEmulationAgree) {
  REQUIRE_BF16();
  Backend& be = cpu_backend();
  const int64_t n = 19, o = 70, in = 300;
  const Mat m = random_mat(n, in, o, in, 9);
  Tensor x = Tensor::from_f32(m.x, {n, in});
  Tensor w = Tensor::zeros(DType::kBF16, {o, in});
  std::memcpy(w.raw(), m.w.data(), m.w.size() * 2);
  Tensor g = Tensor::from_f32(random_mat(n, o, 1, 1, 4).x, {n, o});
  auto run = [&](Numerics num, bool emulate) {
    cpu::bf16_gemm_force_emulation(emulate);
    Tensor y = be.zeros(DType::kF32, {n, o}), dx = be.zeros(DType::kF32, {n, in});
    be.matmul(y, x, w, nullptr, num);
    be.matmul_backward(&dx, nullptr, nullptr, g, x, w, num);
    cpu::bf16_gemm_force_emulation(false);
    return std::pair{y.to_f32(), dx.to_f32()};
  };
  auto max_rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0, s = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      m = std::max(m, std::fabs(double(a[i]) - b[i]));
      s = std::max(s, std::fabs(double(b[i])));
    }
    return m / s;
  };
  const auto [yk, dxk] = run(Numerics::kTorchBf16, false);
  const auto [ye, dxe] = run(Numerics::kTorchBf16, true);
  const auto [yf, dxf] = run(Numerics::kTorch, false);
  EXPECT_LE(max_rel(yk, ye), 1e-5);
  EXPECT_LE(max_rel(dxk, dxe), 1e-5);
  EXPECT_GE(max_rel(yk, yf), 1e-4);  // rounding x to bf16 shows
  EXPECT_GE(max_rel(dxk, dxf), 1e-4);
}

// The emulated path (operand rounded to bf16, then f32 sgemm: what CPUs without AVX512_BF16 run)
// within the same bound of the double reference, on every CPU: any f32 summation order of K
// exact products stays within (K + 8) 2^-24 S. Its operand is rounded (the bound of the unrounded
// operand is exceeded), and kTorch on the same inputs is not rounded.
TEST(Bf16Gemm, EmulatedBackendPathWithinBoundOnAnyCpu) {
  Backend& be = cpu_backend();
  const int64_t n = 5, o = 37, in = 1031;
  const Mat m = random_mat(n, in, o, in, 13);
  const Mat g = random_mat(n, o, 1, 1, 14);
  Tensor x = Tensor::from_f32(m.x, {n, in}), dout = Tensor::from_f32(g.x, {n, o});
  Tensor w = Tensor::zeros(DType::kBF16, {o, in});
  std::memcpy(w.raw(), m.w.data(), m.w.size() * 2);
  cpu::bf16_gemm_force_emulation(true);
  Tensor y = be.zeros(DType::kF32, {n, o}), dx = be.zeros(DType::kF32, {n, in});
  be.matmul(y, x, w, nullptr, Numerics::kTorchBf16);
  be.matmul_backward(&dx, nullptr, nullptr, dout, x, w, Numerics::kTorchBf16);
  cpu::bf16_gemm_force_emulation(false);
  const std::vector<float> yv = y.to_f32(), dxv = dx.to_f32();
  double worst = 0;
  bool above_unrounded = false;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < o; ++c) {  // y: K = in
      double ref = 0, mag = 0, exact = 0;
      for (int64_t k = 0; k < in; ++k) {
        const double wv = bf16_to_f32(m.w[static_cast<size_t>(c * in + k)]);
        const size_t xi = static_cast<size_t>(i * in + k);
        ref += rx(m.x, xi) * wv;
        exact += m.x[xi] * wv;
        mag += std::fabs(rx(m.x, xi) * wv);
      }
      const double bound = static_cast<double>(in + 8) * 0x1p-24 * mag;
      const double got = yv[static_cast<size_t>(i * o + c)];
      worst = std::max(worst, std::fabs(got - ref) / bound);
      if (std::fabs(got - exact) > bound) above_unrounded = true;
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < in; ++c) {  // dx: K = o
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < o; ++k) {
        const double p = rx(g.x, static_cast<size_t>(i * o + k)) *
                         bf16_to_f32(m.w[static_cast<size_t>(k * in + c)]);
        ref += p;
        mag += std::fabs(p);
      }
      const double bound = static_cast<double>(o + 8) * 0x1p-24 * std::max(mag, 1e-300);
      worst = std::max(worst, std::fabs(dxv[static_cast<size_t>(i * in + c)] - ref) / bound);
    }
  EXPECT_LE(worst, 1.0);
  EXPECT_TRUE(above_unrounded);
}

}  // namespace
