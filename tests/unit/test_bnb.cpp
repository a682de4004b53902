// bitsandbytes quantizers: properties that need no oracle (byte layout, exact round trips of code
// values, error bounds, edge cases). Byte equality with bitsandbytes itself is checked by
// tests/conformance/test_hf_quantize.py.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "quant/bnb.h"
#include "test_util.h"

using namespace nnpipe;

namespace {

using test::randn;

TEST(Bnb4bit, CodeValuesRoundTripExactlyHighNibbleFirst) {
  for (Bnb4bitType t : {Bnb4bitType::kNF4, Bnb4bitType::kFP4}) {
    const auto& code = bnb4bit_code(t);
    std::vector<float> x(code.begin(), code.end());
    x.push_back(1.0f);  // absmax 1 in the block (FP4's largest code is 1 too)
    x.resize(64, 0.0f);
    const Bnb4bit q = bnb_quantize_4bit(x, 64, t);
    ASSERT_EQ(q.packed.size(), 32u);
    EXPECT_EQ(q.absmax[0], 1.0f);
    std::vector<float> y(x.size());
    bnb_dequantize_4bit(q.packed, q.absmax, 64, t, y);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], x[i]) << bnb4bit_type_name(t) << " " << i;
    // NF4: value i is code i, so byte 0 holds code 0 (high) and code 1 (low)
    if (t == Bnb4bitType::kNF4) {
      EXPECT_EQ(q.packed[0], 0x01);
    }
  }
}

TEST(Bnb4bit, ErrorWithinHalfTheLargestCodeGap) {
  const std::vector<float> x = randn(1000, 3);  // a partial last block too
  for (Bnb4bitType t : {Bnb4bitType::kNF4, Bnb4bitType::kFP4}) {
    const Bnb4bit q = bnb_quantize_4bit(x, 64, t);
    ASSERT_EQ(q.absmax.size(), 16u);
    std::vector<float> y(x.size());
    bnb_dequantize_4bit(q.packed, q.absmax, 64, t, y);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_LE(std::fabs(y[i] - x[i]), 0.17f * q.absmax[i / 64] + 1e-6f) << i;
  }
}

TEST(Bnb4bit, ZeroBlockOddLengthAndBadInput) {
  std::vector<float> x(65, 0.0f);
  const Bnb4bit q = bnb_quantize_4bit(x, 64, Bnb4bitType::kNF4);
  EXPECT_EQ(q.packed.size(), 33u);
  EXPECT_EQ(q.packed.back(), 0x77);  // 0 -> NF4 code 7; the pad nibble is code(0) too
  EXPECT_EQ(q.absmax, (std::vector<float>{0.0f, 0.0f}));
  EXPECT_THROW(bnb_quantize_4bit(x, 48, Bnb4bitType::kNF4), Error);
  x[3] = NAN;
  EXPECT_THROW(bnb_quantize_4bit(x, 64, Bnb4bitType::kFP4), Error);
}

TEST(BnbInt8, RowScalesZeroRowsAndRounding) {
  std::vector<float> w = {127.0f, 0.5f, 1.5f, -2.5f, 0, 0, 0, 0};
  const BnbInt8 q = bnb_quantize_int8(w, 2, 4);
  EXPECT_EQ(q.scb, (std::vector<float>{127.0f, 0.0f}));
  EXPECT_EQ(q.cb, (std::vector<int8_t>{127, 0, 2, -2, 0, 0, 0, 0}));  // half to even
  std::vector<float> y(w.size());
  bnb_dequantize_int8(q.cb, q.scb, 4, y);
  EXPECT_FLOAT_EQ(y[0], 127.0f);
  EXPECT_EQ(y[5], 0.0f);
  EXPECT_THROW(bnb_quantize_int8(w, 3, 4), Error);
}

TEST(BnbNested, DequantizedAbsmaxIsClose) {
  std::vector<float> a = randn(700, 5);
  for (float& v : a) v = std::fabs(v) + 0.1f;
  const BnbNested n = bnb_quantize_nested(a);
  ASSERT_EQ(n.absmax.size(), 3u);
  std::vector<float> y(a.size());
  const auto& map = bnb_dynamic_map();
  bnb_dequantize_nested(n.q, n.absmax, map, kBnbNestedBlocksize, n.offset, y);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(y[i], a[i], 0.01f * n.absmax[i / 256]) << i;
}

TEST(BnbSum, MatchesSequentialOnExactValues) {
  // Small integers sum exactly in any order: checks the cascade covers every element once.
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 32u, 33u, 255u, 1000u, 5000u, 70000u}) {
    std::vector<float> x(n);
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += (x[i] = static_cast<float>(i % 7));
    EXPECT_EQ(torch_sum_f32(x), static_cast<float>(s)) << n;
  }
}

}  // namespace
