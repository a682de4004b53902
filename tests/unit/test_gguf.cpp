#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/file.h"
#include "io/gguf.h"

using namespace nnpipe;

namespace {

std::span<const uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start = 1) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// The parse error of `bytes` ("" when it parses).
std::string parse_error(const std::string& bytes) {
  try {
    GgufFile::parse(as_bytes(bytes), "t.gguf");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
    return e.what();
  }
  return "";
}

// Hand-built files for the validation tests.
struct Raw {
  std::string b;
  template <typename T>
  Raw& put(T v) {
    char c[sizeof(T)];
    std::memcpy(c, &v, sizeof(T));
    b.append(c, sizeof(T));
    return *this;
  }
  Raw& str(std::string_view s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b += "GGUF";
    return put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Raw& kv_u32(std::string_view key, uint32_t v) { return str(key).put<uint32_t>(4).put(v); }
  Raw& tensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(ne.size());
    for (int64_t d : ne) put(d);
    return put(type).put(offset);
  }
  Raw& pad(size_t align = 32) {
    b.resize((b.size() + align - 1) / align * align, '\0');
    return *this;
  }
  Raw& data(size_t n) {
    b.append(n, '\x05');
    return *this;
  }
};

GgufValue str_array(std::initializer_list<const char*> items) {
  GgufArray a{GgufType::kString, {}};
  for (const char* s : items) a.items.emplace_back(std::string(s));
  return a;
}

}  // namespace

TEST(Gguf, TypeTraitsMatchGgml) {
  EXPECT_EQ(ggml_traits(GgmlType::kQ8_0).block_size, 32u);
  EXPECT_EQ(ggml_traits(GgmlType::kQ8_0).type_size, 34u);
  EXPECT_EQ(ggml_traits(GgmlType::kQ4_0).type_size, 18u);
  EXPECT_EQ(ggml_traits(GgmlType::kQ4_K).type_size, 144u);
  EXPECT_EQ(ggml_traits(GgmlType::kQ6_K).type_size, 210u);
  EXPECT_EQ(ggml_traits(GgmlType::kBF16).type_size, 2u);
  EXPECT_EQ(static_cast<uint32_t>(*ggml_type_from_name("BF16")), 30u);
  EXPECT_FALSE(ggml_type_traits(4));
  EXPECT_FALSE(ggml_type_traits(31));
  std::vector<int64_t> ne = {64, 3};
  EXPECT_EQ(std::get<uint64_t>(ggml_nbytes(GgmlType::kQ8_0, ne)), 2u * 34 * 3);
  std::vector<int64_t> odd = {33, 3};
  EXPECT_NE(std::get<std::string>(ggml_nbytes(GgmlType::kQ8_0, odd)).find("multiple"),
            std::string::npos);
}

TEST(Gguf, RoundTripEveryValueTypeAndTensors) {
  GgufWriter w;
  w.add("general.architecture", "qwen2");
  w.add("u8", uint8_t{200});
  w.add("i8", int8_t{-100});
  w.add("u16", uint16_t{60000});
  w.add("i16", int16_t{-30000});
  w.add("u32", uint32_t{4000000000u});
  w.add("i32", int32_t{-2000000000});
  w.add("f32", 1.5f);
  w.add("bool", true);
  w.add("string", std::string("ünï \"q\""));
  w.add("u64", uint64_t{18000000000000000000ull});
  w.add("i64", int64_t{-9000000000000000000ll});
  w.add("f64", -0.1);
  w.add("nan", std::nanf(""));
  w.add("tokens", str_array({"a", "", "b c"}));
  w.add("empty", GgufArray{GgufType::kI32, {}});
  w.add("ints", GgufArray{GgufType::kI32, {int32_t{1}, int32_t{-2}}});
  w.add("bools", GgufArray{GgufType::kBool, {true, false}});
  GgufArray nested{GgufType::kArray, {GgufArray{GgufType::kU8, {uint8_t{1}}}, str_array({"x"})}};
  w.add("nested", nested);
  auto f32 = iota_bytes(4 * 3 * 2);
  auto q8 = iota_bytes(34 * 2);
  w.add_tensor("w.f32", GgmlType::kF32, {3, 2}, f32);
  w.add_tensor("w.q8", GgmlType::kQ8_0, {64}, q8);

  fs::path p = fs::temp_directory_path() / fmt::format("nnpipe_gguf_rt_{}.gguf", ::getpid());
  w.write(p);
  std::string bytes = read_file(p);
  EXPECT_EQ(bytes, w.to_bytes());
  EXPECT_EQ(bytes.size() % 32, 0u);
  GgufFile f = GgufFile::open(p);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.get_string("general.architecture"), "qwen2");
  EXPECT_EQ(*f.value("u8").get_if<uint8_t>(), 200);
  EXPECT_EQ(*f.value("i8").get_if<int8_t>(), -100);
  EXPECT_EQ(*f.value("u16").get_if<uint16_t>(), 60000);
  EXPECT_EQ(*f.value("i16").get_if<int16_t>(), -30000);
  EXPECT_EQ(f.get_u32("u32"), 4000000000u);
  EXPECT_EQ(f.get_i32("i32"), -2000000000);
  EXPECT_EQ(f.get_f32("f32"), 1.5f);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("string"), "ünï \"q\"");
  EXPECT_EQ(f.get_u64("u64"), 18000000000000000000ull);
  EXPECT_EQ(*f.value("i64").get_if<int64_t>(), -9000000000000000000ll);
  EXPECT_EQ(*f.value("f64").get_if<double>(), -0.1);
  EXPECT_TRUE(std::isnan(f.get_f32("nan")));
  EXPECT_EQ(f.get_string_array("tokens"), (std::vector<std::string_view>{"a", "", "b c"}));
  EXPECT_EQ(f.get_array("empty").type, GgufType::kI32);
  EXPECT_TRUE(f.get_array("empty").items.empty());
  EXPECT_EQ(f.get_array("nested").items.size(), 2u);
  EXPECT_EQ(f.get_array("nested").items[1].get_if<GgufArray>()->type, GgufType::kString);
  // Typed getters do not convert.
  try {
    f.get_u32("u64");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), (p.string() + ": key 'u64': expected UINT32, got UINT64").c_str());
  }
  EXPECT_THROW(f.get_string("missing"), Error);

  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensor& a = f.tensors()[0];
  EXPECT_EQ(a.name, "w.f32");
  EXPECT_EQ(a.ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(a.offset, 0u);
  EXPECT_TRUE(std::equal(a.data.begin(), a.data.end(), f32.begin(), f32.end()));
  const GgufTensor& b = f.get("w.q8");
  EXPECT_EQ(b.type, GgmlType::kQ8_0);
  EXPECT_EQ(b.offset, 32u);  // 24 bytes padded to 32
  EXPECT_EQ(b.numel(), 64u);
  EXPECT_TRUE(std::equal(b.data.begin(), b.data.end(), q8.begin(), q8.end()));
  EXPECT_EQ(f.data_offset() % 32, 0u);

  // Re-writing what we read gives the same bytes.
  GgufWriter again;
  for (const GgufKv& kv : f.metadata()) again.add(kv.key, kv.value);
  for (const GgufTensor& t : f.tensors()) again.add_tensor(t.name, t.type, t.ne, t.data);
  EXPECT_EQ(again.to_bytes(), bytes);
  fs::remove(p);
}

TEST(Gguf, AlignmentVariants) {
  for (uint32_t align : {1u, 8u, 32u, 64u, 4096u}) {
    GgufWriter w;
    w.add("general.alignment", align);
    auto a = iota_bytes(6), b = iota_bytes(10);
    w.add_tensor("a", GgmlType::kF16, {3}, a);
    w.add_tensor("b", GgmlType::kI8, {10}, b);
    std::string bytes = w.to_bytes();
    EXPECT_EQ(bytes.size() % align, 0u) << align;
    GgufFile f = GgufFile::parse(as_bytes(bytes), "a.gguf");
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(f.data_offset() % align, 0u);
    EXPECT_EQ(f.get("b").offset, (6 + align - 1) / align * align) << align;
    EXPECT_EQ(f.get("b").data[9], 10);
  }
  GgufWriter w;
  EXPECT_THROW(w.add("general.alignment", uint32_t{48}), Error);
  EXPECT_THROW(w.add("general.alignment", uint64_t{64}), Error);
}

TEST(Gguf, WriterRejectsBadInput) {
  GgufWriter w;
  w.add("k", uint8_t{1});
  EXPECT_THROW(w.add("k", uint8_t{2}), Error);
  EXPECT_THROW(w.add("mixed", GgufArray{GgufType::kI32, {int32_t{1}, uint8_t{2}}}), Error);
  auto d = iota_bytes(8);
  w.add_tensor("t", GgmlType::kF32, {2}, d);
  EXPECT_THROW(w.add_tensor("t", GgmlType::kF32, {2}, d), Error);
  EXPECT_THROW(w.add_tensor("u", GgmlType::kF32, {3}, d), Error);              // wrong byte count
  EXPECT_THROW(w.add_tensor("v", GgmlType::kQ8_0, {2}, d), Error);             // ne0 % 32
  EXPECT_THROW(w.add_tensor("x", GgmlType::kF32, {2, 1, 1, 1, 1}, d), Error);  // 5 dims
  EXPECT_THROW(w.add_tensor(std::string(64, 'n'), GgmlType::kF32, {2}, d), Error);
}

TEST(Gguf, ValidationErrors) {
  auto err = [](const Raw& r) { return parse_error(r.b); };
  auto has = [](const std::string& e, const std::string& what) {
    EXPECT_NE(e.find(what), std::string::npos) << "error: " << e << "\nexpected: " << what;
  };
  // A valid baseline: one F32 tensor of 4 elements.
  Raw ok;
  ok.header(1, 1).kv_u32("k", 1).tensor("t", {4}, 0, 0).pad().data(16);
  EXPECT_EQ(err(ok), "");

  has(parse_error("GGUX"), "t.gguf: offset 0: not a GGUF file");
  has(parse_error("GG"), "the magic needs 4 bytes");
  has(err(Raw().header(0, 0, 2)), "GGUF version 2 is not supported");
  has(err(Raw().header(0, 0, 0x03000000u)), "big-endian");
  has(parse_error(ok.b.substr(0, 10)), "t.gguf: offset 8: the tensor count needs 8 bytes");
  has(err(Raw().header(1000000, 0)), "tensor count 1000000 cannot fit");
  has(err(Raw().header(0, 1ull << 60)), "key/value count 1152921504606846976 cannot fit");
  has(err(Raw().header(0, 2).kv_u32("k", 1).kv_u32("k", 2)), "offset 41: duplicate key 'k'");
  has(err(Raw().header(0, 1).str("k").put<uint32_t>(13)), "key 'k': unknown value type 13");
  has(err(Raw().header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(100)),
      "string length 100 is beyond the end of the file");
  has(err(Raw().header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1000)),
      "array of 1000 UINT32 cannot fit");
  has(err(Raw().header(0, 1).str("k").put<uint32_t>(7).put<uint8_t>(2)), "bool byte is 2");
  has(err(Raw().header(0, 1).kv_u32("general.alignment", 48)),
      "offset 24: key 'general.alignment': 48 is not a power of two");
  has(err(Raw().header(0, 1).str("general.alignment").put<uint32_t>(10).put<uint64_t>(64)),
      "offset 24: key 'general.alignment': expected UINT32, got UINT64");

  has(err(Raw().header(2, 0).tensor("t", {4}, 0, 0).tensor("t", {4}, 0, 32).pad().data(64)),
      "duplicate tensor name 't'");
  has(err(Raw().header(1, 0).tensor("t", {4}, 0, 16).pad().data(64)),
      "tensor 't': data offset 16 is not a multiple of the alignment 32");
  has(err(Raw().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {4}, 0, 32).pad().data(96)),
      "tensor 'b': data [32, 48) overlaps tensor 'a' [0, 64)");
  Raw beyond;
  beyond.header(1, 0).tensor("blk.0.attn_q.weight", {4, 4}, 0, 32).pad().data(64);
  has(err(beyond),
      "t.gguf: offset 24: tensor 'blk.0.attn_q.weight': data [128, 192) beyond the "
      "end of the file (size 160)");
  has(err(Raw().header(1, 0).tensor("t", {4}, 4, 0).pad().data(64)),
      "tensor 't': unknown ggml type id 4");
  has(err(Raw().header(1, 0).tensor("t", {33}, 8, 0).pad().data(64)),
      "ne[0] = 33 is not a multiple of the Q8_0 block size 32");
  has(err(Raw().header(1, 0).tensor("t", {4, 0}, 0, 0).pad().data(64)), "must be positive");
  has(err(Raw().header(1, 0).tensor("t", {1ll << 40, 1ll << 40}, 0, 0).pad()), "overflow");
  has(err(Raw().header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad()), "n_dims 5");
  has(err(Raw().header(1, 0).tensor(std::string(64, 'x'), {4}, 0, 0).pad().data(16)),
      "limit is 63");
  // Truncated anywhere: always a clean error.
  for (size_t n = 0; n < ok.b.size() - 16; ++n) EXPECT_NE(parse_error(ok.b.substr(0, n)), "") << n;
}
