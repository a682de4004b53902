// cpu::qmatmul against dequantize_rows + a double-precision dot with the activations converted as
// ggml-cpu converts them (written out here from ggml's code, independently of qmatmul_act.cpp).
// tests/conformance/test_qmatmul_ggml.py compares with ggml itself.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "core/error.h"
#include "core/half.h"
#include "core/sysinfo.h"
#include "quant/ggml_quants.h"
#include "test_util.h"

using namespace nnpipe;
namespace qk = nnpipe::cpu::qk;

namespace {

const DType kTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kF16,  DType::kQ4_K,
                        DType::kQ6_K, DType::kQ5_0, DType::kQ5_K, DType::kQ4_1,
                        DType::kQ5_1, DType::kBF16, DType::kF32};

using test::randn;

// ggml-cpu's activation conversion, as values: Q8_0/Q8_1 blocks of 32 from quantize_row_q8_0 of
// ggml-cpu/arch/x86/quants.c (d = f16(amax / 127), q = round_half_even(x * (127 / amax))), Q8_K
// blocks of 256 from quantize_row_q8_K_ref (scale from the signed value of largest magnitude,
// iscale = -127 / max, q = min(127, round_half_even(iscale * x)), d = 1 / iscale in f32).
// For Q8_1 also ds[b] = s - d * sum(q) of each block: ggml adds m * s, s = f16(amax / 127 *
// sum(q)).
std::vector<double> converted(DType w, const float* x, int64_t cols,
                              std::vector<double>* ds = nullptr) {
  std::vector<double> v(static_cast<size_t>(cols));
  if (ds) ds->assign(static_cast<size_t>(cols / 32), 0.0);
  const DType a = dtype_activation(w);
  if (a == DType::kQ8_0 || a == DType::kQ8_1) {
    for (int64_t b = 0; b < cols; b += 32) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
      const float d32 = amax / 127.0f, d = f16_to_f32(f32_to_f16(d32));
      const float id = amax != 0 ? 127.0f / amax : 0.0f;
      float qsum = 0;
      for (int j = 0; j < 32; ++j) {
        v[b + j] = double(d) * std::nearbyint(x[b + j] * id);
        qsum += std::nearbyint(x[b + j] * id);
      }
      // s is rounded from the unrounded d (quantize_row_q8_1: d * hsum before FP32_TO_FP16).
      if (ds) (*ds)[b / 32] = double(f16_to_f32(f32_to_f16(d32 * qsum))) - double(d) * qsum;
    }
  } else if (a == DType::kQ8_K) {
    for (int64_t b = 0; b < cols; b += 256) {
      float amax = 0, max = 0;
      for (int j = 0; j < 256; ++j)
        if (std::fabs(x[b + j]) > amax) amax = std::fabs(x[b + j]), max = x[b + j];
      if (amax == 0) continue;
      const float iscale = -127.0f / max;
      for (int j = 0; j < 256; ++j)
        v[b + j] = double(1.0f / iscale) * std::min(127.0f, std::nearbyint(iscale * x[b + j]));
    }
  } else if (a == DType::kF16) {
    for (int64_t i = 0; i < cols; ++i) v[i] = f16_to_f32(f32_to_f16(x[i]));
  } else if (a == DType::kBF16) {
    for (int64_t i = 0; i < cols; ++i) v[i] = bf16_to_f32(f32_to_bf16(x[i]));
  } else {
    for (int64_t i = 0; i < cols; ++i) v[i] = x[i];
  }
  return v;
}

struct Case {
  DType type;
  int64_t rows, cols;
  std::vector<uint8_t> wq;  // W (rows, cols) in `type`
  std::vector<float> wd, x;
  Tensor w() const { return Tensor::borrow(type, {rows, cols}, wq); }
  size_t row_bytes() const { return dtype_row_bytes(type, cols); }
  const uint8_t* row(int64_t r) const { return wq.data() + r * row_bytes(); }
};

Case make_case(DType t, int64_t rows, int64_t cols, int64_t n, uint32_t seed) {
  Case c{t, rows, cols, {}, {}, {}};
  std::vector<float> wf = randn(static_cast<size_t>(rows * cols), seed);
  c.wq = quantize_rows(t, wf, cols);
  c.wd.resize(wf.size());
  dequantize_rows(t, c.wq, c.wd);
  c.x = randn(static_cast<size_t>(n * cols), seed + 1);
  for (int64_t i = 0; i < n; ++i)  // tokens of very different magnitudes
    for (int64_t j = 0; j < cols; ++j) c.x[i * cols + j] *= std::pow(10.0f, float(i % 5) - 2);
  return c;
}

std::vector<float> run(const Case& c, int64_t n) {
  std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
  cpu::qmatmul(y.data(), c.x.data(), n, c.w());
  return y;
}

// |y - ref| <= 1e-5 * sum |w| |x| (summation order and f32 rounding only; see the conformance
// test for why this is the right scale).
// `scales` (optional) receives each output's sum |w| |xq|.
void expect_close(const Case& c, int64_t n, const std::vector<float>& y, const char* what,
                  std::vector<double>* scales = nullptr) {
  const int64_t rows = c.rows, cols = c.cols;
  int bad = 0;
  if (scales) scales->assign(static_cast<size_t>(n * rows), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> ds;
    const std::vector<double> xv = converted(c.type, c.x.data() + t * cols, cols, &ds);
    const bool q8_1 = dtype_activation(c.type) == DType::kQ8_1;
    const size_t bsz = dtype_size(c.type);
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, scale = 0;
      for (int64_t j = 0; j < cols; ++j) {
        ref += double(c.wd[r * cols + j]) * xv[j];
        scale += std::fabs(double(c.wd[r * cols + j]) * xv[j]);
      }
      if (q8_1)  // Q4_1/Q5_1 blocks {f16 d; f16 m; ...}: ggml's m * f16(s) term
        for (int64_t b = 0; b < cols / 32; ++b) {
          uint16_t m;
          std::memcpy(&m, c.row(r) + b * bsz + 2, 2);
          ref += double(f16_to_f32(m)) * ds[static_cast<size_t>(b)];
        }
      if (scales) (*scales)[static_cast<size_t>(t * rows + r)] = scale;
      const double err = std::fabs(double(y[t * rows + r]) - ref);
      if (!(err <= 1e-5 * scale + 1e-30) && bad++ < 5)
        ADD_FAILURE() << what << " " << dtype_name(c.type) << " n=" << n << " t=" << t << " r=" << r
                      << ": " << y[t * rows + r] << " vs " << ref << " (scale " << scale << ")";
    }
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

std::vector<qk::Isa> isas() {
  std::vector<qk::Isa> v{qk::Isa::kScalar};
  if (qk::cpu_has_avx2()) v.push_back(qk::Isa::kAvx2);
  return v;
}

struct IsaGuard {
  explicit IsaGuard(qk::Isa isa) { qk::force_isa(isa); }
  ~IsaGuard() { qk::reset_isa(); }
};

}  // namespace

TEST(Qmatmul, EveryTypeMatchesDequantizedDoubleDot) {
  for (qk::Isa isa : isas()) {
    IsaGuard g(isa);
    for (DType t : kTypes) {
      const int64_t cols = dtype_block_size(t) == 256 ? 512 : 96;
      for (int64_t n : {1, 2, 7, 64}) {
        const Case c = make_case(t, 13, cols, n, 7 + static_cast<uint32_t>(n));
        expect_close(c, n, run(c, n), isa == qk::Isa::kAvx2 ? "avx2" : "scalar");
        // Both explicit paths, whatever qmatmul picks for (type, n).
        for (qk::Path p : {qk::Path::kDot, qk::Path::kSgemm, qk::Path::kVnni}) {
          if (p == qk::Path::kVnni &&
              !(isa == qk::Isa::kAvx2 && cpu_has_avx512vnni() && qk::vnni_gemm_supported(t)))
            continue;
          std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
          qk::qmatmul_path(y.data(), c.x.data(), n, c.w(), p);
          expect_close(c, n, y,
                       p == qk::Path::kDot     ? "dot"
                       : p == qk::Path::kSgemm ? "sgemm"
                                               : "vnni");
        }
      }
    }
  }
}

// The VNNI GEMM's tiling: several 64-row chunks, a last chunk and row group cut short, token
// groups cut short, and the same bits for any thread count and for any token's batch.
TEST(Qmatmul, VnniGemmTilesMatchDequantizedDoubleDot) {
  if (!cpu_has_avx512vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  const int saved = omp_get_max_threads();
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K}) {
    for (int64_t rows : {1, 18, 257}) {
      const int64_t n = 37;
      const Case c = make_case(t, rows, 1024, n, 5 + static_cast<uint32_t>(rows));
      std::vector<float> y1(static_cast<size_t>(n * rows), NAN), y3 = y1, y5 = y1;
      omp_set_num_threads(1);
      qk::qmatmul_path(y1.data(), c.x.data(), n, c.w(), qk::Path::kVnni);
      omp_set_num_threads(3);
      qk::qmatmul_path(y3.data(), c.x.data(), n, c.w(), qk::Path::kVnni);
      expect_close(c, n, y1, "vnni");
      EXPECT_TRUE(same_bits(y1, y3)) << dtype_name(t) << " rows " << rows;
      // Tokens 32..36 alone: the same bits as inside the batch of 37.
      qk::qmatmul_path(y5.data(), c.x.data() + 32 * 1024, 5, c.w(), qk::Path::kVnni);
      EXPECT_EQ(std::memcmp(y5.data(), y1.data() + 32 * rows, 5 * rows * 4), 0) << dtype_name(t);
    }
  }
  omp_set_num_threads(saved);
}

TEST(Qmatmul, ActivationConversionMatchesGgmlAlgorithm) {
  // Includes exact .5 ties of x * id (half to even, unlike the _ref quantizer's roundf).
  std::vector<float> x = randn(512, 3);
  for (int j = 1; j < 32; ++j) x[j] = (j - 16) + 0.5f;
  x[0] = 127.0f;
  x[300] = -9.0f;  // the largest magnitude of the second Q8_K block is negative
  for (DType t : {DType::kQ8_0, DType::kQ4_1, DType::kQ4_K, DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> a(qk::act_row_bytes(t, 512));
    qk::convert_activations(t, x.data(), 512, a.data());
    std::vector<float> e(512);
    qk::expand_activations(t, a.data(), 512, e.data());
    const std::vector<double> ref = converted(t, x.data(), 512);
    for (int i = 0; i < 512; ++i)  // Q8_K: d * q is rounded to f32 by expand_activations
      ASSERT_EQ(e[i], static_cast<float>(ref[i])) << dtype_name(t) << " " << i;
  }
  // Q8_1's s = f16(d * sum(q)); Q8_K's bsums are sums of 16 quants.
  std::vector<uint8_t> a(qk::act_row_bytes(DType::kQ4_1, 32));
  qk::convert_activations(DType::kQ4_1, x.data(), 32, a.data());
  int sum = 0;
  for (int j = 0; j < 32; ++j) sum += static_cast<int8_t>(a[4 + j]);
  uint16_t d, s;
  std::memcpy(&d, a.data(), 2);
  std::memcpy(&s, a.data() + 2, 2);
  EXPECT_EQ(s, f32_to_f16(f16_to_f32(d) * float(sum)));
  std::vector<uint8_t> k(qk::act_row_bytes(DType::kQ6_K, 256));
  qk::convert_activations(DType::kQ6_K, x.data(), 256, k.data());
  for (int j = 0; j < 16; ++j) {
    int bs = 0;
    for (int i = 0; i < 16; ++i) bs += static_cast<int8_t>(k[4 + 16 * j + i]);
    int16_t got;
    std::memcpy(&got, k.data() + 260 + 2 * j, 2);
    EXPECT_EQ(got, bs);
  }
}

TEST(Qmatmul, ThreadCountAndBatchIndependent) {
  const int saved = omp_get_max_threads();
  for (DType t : kTypes) {
    const int64_t cols = dtype_block_size(t) == 256 ? 1024 : 1024;
    const Case c = make_case(t, 257, cols, 7, 11);
    omp_set_num_threads(1);
    const std::vector<float> y1 = run(c, 7);
    omp_set_num_threads(3);
    const std::vector<float> y3 = run(c, 7);
    EXPECT_TRUE(same_bits(y1, y3)) << dtype_name(t);
    // Token 5 alone gives the same bits as inside the batch of 7 (dot-kernel path), except for
    // F16/F32 on AVX2, whose one-token kernel sums with 8 accumulators instead of 4.
    if (qk::active_isa() == qk::Isa::kAvx2 && (t == DType::kF16 || t == DType::kF32)) continue;
    Case one = c;
    one.x.assign(c.x.begin() + 5 * cols, c.x.begin() + 6 * cols);
    const std::vector<float> y = run(one, 1);
    EXPECT_TRUE(std::memcmp(y.data(), y3.data() + 5 * 257, 257 * 4) == 0) << dtype_name(t);
  }
  omp_set_num_threads(saved);
}

TEST(Qmatmul, ScalarAndAvx2Agree) {
  if (!qk::cpu_has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  for (DType t : kTypes) {
    const int64_t cols = 768;
    const Case c = make_case(t, 33, cols, 3, 5);
    std::vector<float> ys, ya;
    {
      IsaGuard g(qk::Isa::kScalar);
      ys = run(c, 3);
    }
    {
      IsaGuard g(qk::Isa::kAvx2);
      ya = run(c, 3);
    }
    std::vector<double> scale;
    expect_close(c, 3, ys, "scalar", &scale);
    expect_close(c, 3, ya, "avx2");
    // Same activations and exact integer block sums: only the f32 summation order differs.
    for (size_t i = 0; i < ys.size(); ++i)
      EXPECT_LE(std::fabs(double(ys[i]) - ya[i]), 1e-5 * scale[i]) << dtype_name(t) << " " << i;
  }
}

TEST(Qmatmul, RowLookupAndErrors) {
  const Case c = make_case(DType::kQ4_K, 5, 256, 1, 2);
  std::vector<float> row(256);
  cpu::qmatmul_row(c.w(), 3, row.data());
  EXPECT_EQ(0, std::memcmp(row.data(), c.wd.data() + 3 * 256, 256 * 4));
  EXPECT_THROW(cpu::qmatmul_row(c.w(), 5, row.data()), Error);
  // Q8_K is a DType (the K-quants' activations) but no weight type.
  EXPECT_FALSE(cpu::qmatmul_supported(DType::kQ8_K));
  EXPECT_FALSE(cpu::qmatmul_supported(DType::kI32));
  std::vector<float> y(5);
  for (const Tensor& bad : {Tensor::borrow(DType::kQ8_K, {1, 256}, std::span(c.wq).first(292)),
                            Tensor::borrow(DType::kI32, {5, 4}, std::span(c.wq).first(80)),
                            Tensor::borrow(DType::kQ4_K, {5 * 256}, c.wq)}) {
    try {
      cpu::qmatmul(y.data(), c.x.data(), 1, bad);
      ADD_FAILURE() << "no error for " << bad.describe();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << bad.describe();
    }
  }
}

TEST(Qmatmul, PromptTilesCoverEveryToken) {
  // 4096 Q8_0 columns: token chunks of 28 (128 KiB of activations), so 90 tokens take 4 chunks
  // (the last one partial, ending in a 2-token group); every output equals the token alone.
  for (DType t : {DType::kQ8_0, DType::kQ4_K}) {
    const int64_t n = 90, cols = 4096;
    const Case c = make_case(t, 19, cols, n, 21);
    std::vector<float> y(static_cast<size_t>(n * 19), NAN);
    qk::qmatmul_path(y.data(), c.x.data(), n, c.w(), qk::Path::kDot);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> one(19);
      cpu::qmatmul(one.data(), c.x.data() + i * cols, 1, c.w());
      ASSERT_EQ(0, std::memcmp(one.data(), y.data() + i * 19, 19 * 4))
          << dtype_name(t) << " token " << i;
    }
  }
}

TEST(Qmatmul, MultiRowDecodeKernelEqualsTheRowKernel) {
  // The decode path's kMaxRows-row kernels (Q8_0, Q4_0 without the sign trick, Q5_0) give each
  // row's single-row result bit for bit, including a partial last group (rows % 4 != 0).
  if (!qk::cpu_has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  IsaGuard g(qk::Isa::kAvx2);
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0}) {
    ASSERT_NE(qk::avx2_dot_rows(t), nullptr) << dtype_name(t);
    for (int64_t rows : {1, 3, 4, 37}) {
      const Case c = make_case(t, rows, 1024, 1, 31);
      std::vector<float> multi(static_cast<size_t>(rows), NAN), single(multi.size(), NAN);
      qk::qmatmul_path(multi.data(), c.x.data(), 1, c.w(), qk::Path::kAuto);
      qk::qmatmul_path(single.data(), c.x.data(), 1, c.w(), qk::Path::kDot);
      EXPECT_TRUE(same_bits(multi, single)) << dtype_name(t) << " rows " << rows;
    }
  }
}

TEST(Qmatmul, Avx2DequantizationEqualsDequantizeRows) {
  // The sgemm path's AVX2 dequantization gives dequantize_rows' values bit for bit.
  if (!qk::cpu_has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  for (DType t : {DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    const Case c = make_case(t, 5, 1024 + 96, 1, 41);
    const size_t n = static_cast<size_t>(c.rows * c.cols);
    std::vector<float> ours(n, NAN), ref(n, NAN);
    ASSERT_TRUE(qk::avx2_dequantize(t, c.wq.data(), c.rows * c.cols, ours.data()));
    dequantize_rows(t, std::span<const uint8_t>(c.wq.data(), c.rows * c.row_bytes()),
                    std::span<float>(ref));
    EXPECT_TRUE(same_bits(ours, ref)) << dtype_name(t);
  }
  EXPECT_FALSE(qk::avx2_dequantize(DType::kQ4_K, nullptr, 0, nullptr));
}
