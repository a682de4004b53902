#include <gtest/gtest.h>

#include <cmath>

#include "train/lr_schedule.h"

using namespace nnpipe;

TEST(LrSchedule, Names) {
  EXPECT_EQ(lr_schedule_from_name("cosine"), LrSchedule::kCosine);
  EXPECT_EQ(lr_schedule_name(LrSchedule::kLinear), "linear");
  EXPECT_FALSE(lr_schedule_from_name("step").has_value());
}

TEST(LrSchedule, Warmup) {
  for (auto s : {LrSchedule::kConstant, LrSchedule::kLinear, LrSchedule::kCosine}) {
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 0, 4, 10), 0.0);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 2, 4, 10), 0.5);
    EXPECT_DOUBLE_EQ(lr_multiplier(s, 4, 4, 10), 1.0);
  }
}

TEST(LrSchedule, LinearAndCosineDecay) {
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::kLinear, 7, 4, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::kLinear, 10, 4, 10), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::kLinear, 12, 4, 10), 0.0);  // clamped
  EXPECT_NEAR(lr_multiplier(LrSchedule::kCosine, 7, 4, 10), 0.5, 1e-15);
  EXPECT_NEAR(lr_multiplier(LrSchedule::kCosine, 10, 4, 10), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::kConstant, 1000, 4, 10), 1.0);
  // No warmup, total 0: no division by zero.
  EXPECT_DOUBLE_EQ(lr_multiplier(LrSchedule::kLinear, 0, 0, 0), 0.0);
}
