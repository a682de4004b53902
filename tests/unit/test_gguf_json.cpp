#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "io/gguf_json.h"

using namespace nnpipe;

TEST(GgufJson, RoundTripKeepsExactTypes) {
  GgufArray nested{GgufType::kArray,
                   {GgufArray{GgufType::kU16, {uint16_t{7}}}, GgufArray{GgufType::kString, {}}}};
  std::vector<GgufKv> kvs = {{"a", uint8_t{255}},
                             {"b", int64_t{-5}},
                             {"c", 0.1f},
                             {"d", -std::numeric_limits<double>::infinity()},
                             {"e", std::nanf("")},
                             {"f", true},
                             {"g", std::string("x\"y")},
                             {"h", nested},
                             {"i", GgufArray{GgufType::kBool, {false}}}};
  for (const GgufKv& kv : kvs) {
    ordered_json j = gguf_kv_to_json(kv);
    GgufKv back = gguf_kv_from_json(json::parse(j.dump()), "spec");
    EXPECT_EQ(back.key, kv.key);
    EXPECT_EQ(back.value.type(), kv.value.type()) << j.dump();
    EXPECT_EQ(gguf_kv_to_json(back).dump(), j.dump());
  }
  EXPECT_EQ(gguf_kv_to_json(kvs[4])["value"], "NaN");
  EXPECT_EQ(gguf_kv_to_json(kvs[7]).dump(),
            R"({"key":"h","type":"ARRAY","element_type":"ARRAY","value":[)"
            R"({"element_type":"UINT16","value":[7]},{"element_type":"STRING","value":[]}]})");
}

TEST(GgufJson, RejectsOutOfRangeAndWrongTypes) {
  auto bad = [](const char* text) {
    EXPECT_THROW(gguf_kv_from_json(json::parse(text), "spec"), Error) << text;
  };
  bad(R"({"key":"k","type":"UINT8","value":256})");
  bad(R"({"key":"k","type":"INT8","value":-129})");
  bad(R"({"key":"k","type":"UINT64","value":-1})");
  bad(R"({"key":"k","type":"UINT32","value":1.5})");
  bad(R"({"key":"k","type":"BOOL","value":1})");
  bad(R"({"key":"k","type":"STRING","value":1})");
  bad(R"({"key":"k","type":"WORD","value":1})");
  bad(R"({"key":"k","type":"ARRAY","value":[1]})");
  bad(R"({"key":"k","type":"ARRAY","element_type":"INT32","value":["x"]})");
}
