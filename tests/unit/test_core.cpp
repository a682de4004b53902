#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/embedded.h"
#include "core/error.h"
#include "core/file.h"
#include "core/half.h"
#include "core/json.h"
#include "core/rng.h"

using namespace nnpipe;

TEST(Half, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly half-way between two bf16 values: ties to even (down to 1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f)), 1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Half, F16AllValuesRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << h;
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(1e-8f), 0x0000);
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  // halfway between 1 and 1+2^-10 rounds to even
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
}

TEST(Rng, DeterministicAndNormal) {
  Rng a(7), b(7);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next_u64(), b.next_u64());
  Rng r(1);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = r.normal();
    s += x;
    s2 += x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
}

TEST(Json, ErrorNamesLineAndColumn) {
  try {
    parse_json("{\n  \"a\": 1,\n  \"b\": tru\n}", "x.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find("x.json: line 3"), std::string::npos) << e.what();
  }
}

TEST(Json, NumberOutOfRangeIsAFormatError) {
  try {
    parse_json("{\"rope_theta\": 1E400}", "config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat);
    EXPECT_NE(std::string(e.what()).find("config.json: "), std::string::npos) << e.what();
  }
}

TEST(File, AtomicWriteAndStaging) {
  fs::path dir = fs::temp_directory_path() / "nnpipe_test_file";
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_file_atomic(dir / "a.txt", "hello");
  EXPECT_EQ(read_file(dir / "a.txt"), "hello");
  {
    MappedFile m(dir / "a.txt");
    ASSERT_EQ(m.size(), 5u);
    EXPECT_EQ(std::memcmp(m.data(), "hello", 5), 0);
  }
  {
    StagingDir s(dir / "out");
    write_file_atomic(s.path() / "f", "x");
    // destroyed without commit: nothing is left behind
  }
  EXPECT_FALSE(fs::exists(dir / "out"));
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) n += e.path().filename() != "a.txt";
  EXPECT_EQ(n, 0u);
  {
    StagingDir s(dir / "out");
    write_file_atomic(s.path() / "f", "x");
    s.commit();
  }
  EXPECT_EQ(read_file(dir / "out" / "f"), "x");
  EXPECT_THROW(read_file(dir / "missing"), Error);
  fs::remove_all(dir);
}

TEST(Embedded, SampleDataPresent) {
  EXPECT_FALSE(embedded::find("sample.json").empty());
  EXPECT_TRUE(embedded::find("nope").empty());
}
