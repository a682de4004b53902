#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <tuple>

#include "core/error.h"
#include "core/half.h"
#include "quant/ggml_quants.h"
#include "test_util.h"

using namespace nnpipe;

namespace {

using test::randn;

std::vector<float> round_trip(DType t, const std::vector<float>& x, int64_t cols) {
  std::vector<uint8_t> q = quantize_rows(t, x, cols);
  std::vector<float> y(x.size());
  dequantize_rows(t, q, y);
  return y;
}

ErrorCode error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "no error thrown";
  return ErrorCode::kInternal;
}

}  // namespace

TEST(GgmlQuants, OutputSizesFollowTheBlockLayout) {
  const std::vector<float> x = randn(4 * 256, 1);
  const std::pair<DType, size_t> cases[] = {
      {DType::kF32, 4 * 1024}, {DType::kF16, 2 * 1024}, {DType::kBF16, 2 * 1024},
      {DType::kQ8_0, 32 * 34}, {DType::kQ4_0, 32 * 18}, {DType::kQ4_1, 32 * 20},
      {DType::kQ5_0, 32 * 22}, {DType::kQ5_1, 32 * 24}, {DType::kQ6_K, 4 * 210}};
  for (auto [t, bytes] : cases) EXPECT_EQ(quantize_rows(t, x, 256).size(), bytes) << int(t);
}

// Per block, the reconstruction error stays within half a step (a full step where the code
// clamps: Q4_0/Q5_0's positive end), plus the f16 rounding of the scale and min.
TEST(GgmlQuants, RoundTripErrorWithinTheStep) {
  const std::vector<float> x = randn(64 * 512, 2, 3.0f);
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ4_1, DType::kQ5_1}) {
    const std::vector<float> y = round_trip(t, x, 512);
    for (size_t b = 0; b < x.size(); b += 32) {
      float amax = 0, mn = x[b], mx = x[b];
      for (size_t j = b; j < b + 32; ++j) {
        amax = std::max(amax, std::fabs(x[j]));
        mn = std::min(mn, x[j]);
        mx = std::max(mx, x[j]);
      }
      float bound = 0;
      switch (t) {
        case DType::kQ8_0:
          bound = amax / 254 + amax * 1e-3f;
          break;
        case DType::kQ4_0:
          bound = amax / 8 + amax * 1e-3f;
          break;
        case DType::kQ5_0:
          bound = amax / 16 + amax * 1e-3f;
          break;
        case DType::kQ4_1:
          bound = (mx - mn) / 30 + amax * 2e-3f;
          break;
        default:
          bound = (mx - mn) / 62 + amax * 2e-3f;
          break;
      }
      for (size_t j = b; j < b + 32; ++j)
        ASSERT_LE(std::fabs(y[j] - x[j]), bound) << "type " << int(t) << " elem " << j;
    }
  }
}

// Q6_K (llama.cpp's reference algorithm): within half a step of each super-block's 6-bit grid
// (A/32 with A = max |x|, the top code may clamp) plus f16 rounding of d; constant and zero
// super-blocks come back exactly.
TEST(GgmlQuants, Q6KRoundTripWithinBound) {
  std::vector<float> x = randn(16 * 1024, 5, 2.0f);
  const std::vector<float> y = round_trip(DType::kQ6_K, x, 1024);
  double se = 0, sx = 0;
  for (size_t b = 0; b < x.size(); b += 256) {
    float amax = 0;
    for (size_t j = b; j < b + 256; ++j) amax = std::max(amax, std::fabs(x[j]));
    for (size_t j = b; j < b + 256; ++j) {
      ASSERT_LE(std::fabs(y[j] - x[j]), amax / 32 + amax * 1e-3f) << j;
      se += double(y[j] - x[j]) * (y[j] - x[j]);
      sx += double(x[j]) * x[j];
    }
  }
  EXPECT_LE(std::sqrt(se / sx), 0.025);
  std::vector<float> c(512, 0.0f);
  std::fill(c.begin() + 256, c.end(), -7.0f);
  EXPECT_EQ(round_trip(DType::kQ6_K, c, 512), c);
  const std::vector<uint8_t> zero = quantize_rows(DType::kQ6_K, std::vector<float>(256), 256);
  EXPECT_EQ(zero, std::vector<uint8_t>(210, 0));
}

// Q4_K / Q5_K (llama.cpp's reference algorithms): within one step of the super-block's range
// including 0 (range / 15 or / 31; no tighter guarantee from the heuristic fit), RMS near
// step / sqrt(12); zero blocks are all-zero bytes.
TEST(GgmlQuants, Q4KQ5KRoundTripWithinBound) {
  const std::vector<float> x = randn(16 * 1024, 6, 0.5f);
  for (auto [t, nmax, rms] : {std::tuple{DType::kQ4_K, 15, 0.08}, {DType::kQ5_K, 31, 0.041}}) {
    const std::vector<float> y = round_trip(t, x, 1024);
    double se = 0, sx = 0;
    for (size_t b = 0; b < x.size(); b += 256) {
      float mn = 0, mx = 0;
      for (size_t j = b; j < b + 256; ++j) {
        mn = std::min(mn, x[j]);
        mx = std::max(mx, x[j]);
      }
      for (size_t j = b; j < b + 256; ++j) {
        ASSERT_LE(std::fabs(y[j] - x[j]), (mx - mn) / nmax) << int(t) << " " << j;
        se += double(y[j] - x[j]) * (y[j] - x[j]);
        sx += double(x[j]) * x[j];
      }
    }
    EXPECT_LE(std::sqrt(se / sx), rms) << int(t);
    const size_t bytes = t == DType::kQ4_K ? 144 : 176;
    EXPECT_EQ(quantize_rows(t, std::vector<float>(256), 256), std::vector<uint8_t>(bytes, 0));
  }
}

TEST(GgmlQuants, FloatTypesRoundTrip) {
  const std::vector<float> x = randn(1000, 3, 100.0f);
  EXPECT_EQ(round_trip(DType::kF32, x, 1000), x);
  const std::vector<float> h = round_trip(DType::kF16, x, 100);
  const std::vector<float> b = round_trip(DType::kBF16, x, 10);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(h[i] - x[i]), std::fabs(x[i]) * 0x1p-11f);
    EXPECT_LE(std::fabs(b[i] - x[i]), std::fabs(x[i]) * 0x1p-8f);
  }
}

TEST(GgmlQuants, ZeroAndConstantBlocksAreExact) {
  std::vector<float> x(64, 0.0f);
  std::fill(x.begin() + 32, x.end(), -127.0f);  // every scale is exact in f16
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ4_1, DType::kQ5_1})
    EXPECT_EQ(round_trip(t, x, 64), x) << int(t);
}

TEST(GgmlQuants, ResultDoesNotDependOnThreads) {
  const std::vector<float> x = randn(8192 * 32, 4);  // above the threading threshold
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const std::vector<uint8_t> one = quantize_rows(DType::kQ4_1, x, 4096);
  omp_set_num_threads(std::max(2, saved));
  const std::vector<uint8_t> many = quantize_rows(DType::kQ4_1, x, 4096);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, many);
}

TEST(GgmlQuants, Q4KDequantizeUsesSixBitScalesAndMins) {
  uint8_t b[144] = {};
  const uint16_t d = f32_to_f16(0.5f), dmin = f32_to_f16(0.25f);
  std::memcpy(b, &d, 2);
  std::memcpy(b + 2, &dmin, 2);
  // Sub-block s: scale s + 1 and min 2 * s, packed per the 12-byte layout; sub-block 4 also gets
  // a high bit in its min (6-bit values span two bytes).
  const int sc[8] = {1, 2, 3, 4, 5, 6, 7, 8}, m[8] = {0, 2, 4, 6, 8, 10, 12, 14};
  uint8_t* s = b + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(sc[j]);
    s[j + 4] = static_cast<uint8_t>(m[j]);
    s[j + 8] = static_cast<uint8_t>(sc[j + 4] | (m[j + 4] << 4));
  }
  s[4] |= 1 << 6;  // sub-block 4's min gains its high bits: 8 + 16
  for (int i = 0; i < 128; ++i) b[16 + i] = static_cast<uint8_t>((i % 16) | (((i + 3) % 16) << 4));
  std::vector<float> y(256);
  dequantize_rows(DType::kQ4_K, b, y);
  for (int e = 0; e < 256; ++e) {
    const int sb = e / 32, l = e % 32, byte = 32 * (sb / 2) + l;
    const int q = sb % 2 ? ((byte + 3) % 16) : byte % 16;
    const int mm = m[sb] + (sb == 4 ? 16 : 0);
    EXPECT_EQ(y[e], 0.5f * sc[sb] * q - 0.25f * mm) << e;
  }
}

TEST(GgmlQuants, Q6KDequantizeExtremes) {
  uint8_t b[210] = {};
  for (int i = 0; i < 16; ++i) b[192 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 8));
  const uint16_t d = f32_to_f16(2.0f);
  std::memcpy(b + 208, &d, 2);
  std::vector<float> y(256);
  dequantize_rows(DType::kQ6_K, b, y);  // all codes 0 -> -32
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 2.0f * (e / 16 - 8) * -32) << e;
  std::memset(b, 0xFF, 192);  // all codes 63 -> 31
  dequantize_rows(DType::kQ6_K, b, y);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 2.0f * (e / 16 - 8) * 31) << e;
}

// NaN/inf weights (which llama-quantize rejects) must not crash or overflow a conversion: the codes
// are what ggml's casts give on x86-64 (ggml_rounding.h).
TEST(GgmlQuants, NonFiniteInputsDoNotCrash) {
  std::vector<float> x = randn(512, 7);
  x[3] = NAN;
  x[40] = INFINITY;
  x[300] = -INFINITY;
  for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ4_1, DType::kQ5_1,
                  DType::kQ4_K, DType::kQ5_K, DType::kQ6_K})
    EXPECT_EQ(quantize_rows(t, x, 512).size(),
              static_cast<size_t>(512 / dtype_block_size(t)) * dtype_size(t));
}

TEST(GgmlQuants, BadSizesAreErrors) {
  const std::vector<float> x(96, 1.0f);
  EXPECT_EQ(error_of([&] { quantize_rows(DType::kQ4_0, x, 48); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { quantize_rows(DType::kQ8_0, x, 64); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { quantize_rows(DType::kQ8_0, x, 0); }), ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { quantize_rows(DType::kQ8_K, std::vector<float>(256), 256); }),
            ErrorCode::kUnsupported);
  std::vector<float> out(64);
  EXPECT_EQ(error_of([&] { dequantize_rows(DType::kQ4_0, std::vector<uint8_t>(35), out); }),
            ErrorCode::kInvalidArgument);
  std::vector<float> odd(48);
  EXPECT_EQ(error_of([&] { dequantize_rows(DType::kQ4_0, std::vector<uint8_t>(27), odd); }),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { dequantize_rows(DType::kQ8_1, std::vector<uint8_t>(84), out); }),
            ErrorCode::kUnsupported);
}
