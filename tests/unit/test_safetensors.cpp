#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "io/safetensors.h"

using namespace nnpipe;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / fmt::format("nnpipe_st_{}_{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start = 1) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// A file from a header text and a buffer, with the length prefix computed (or forced).
std::string raw_file(const std::string& header, size_t buffer_bytes,
                     std::optional<uint64_t> len = {}) {
  std::string out(8, '\0');
  uint64_t n = len.value_or(header.size());
  std::memcpy(out.data(), &n, 8);
  out += header;
  out.append(buffer_bytes, '\x07');
  return out;
}

std::string parse_error(const std::string& bytes) {
  try {
    SafetensorsFile::parse({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, "t.st");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Safetensors, RoundTripEveryDtypeWithMetadata) {
  fs::path dir = temp_dir("rt");
  const DType all[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64,    DType::kI8,
                       DType::kU8,  DType::kI16, DType::kU16,  DType::kI32,    DType::kU32,
                       DType::kI64, DType::kU64, DType::kBool, DType::kF8E4M3, DType::kF8E5M2};
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorRef> refs;
  uint8_t start = 0;
  for (DType t : all) {
    bufs.push_back(iota_bytes(2 * 3 * dtype_size(t), start += 3));
    refs.push_back({fmt::format("t.{}", dtype_name(t)), t, {2, 3}, bufs.back()});
  }
  bufs.push_back(iota_bytes(4));
  refs.push_back({"scalar", DType::kF32, {}, bufs.back()});
  refs.push_back({"empty", DType::kBF16, {0, 5}, {}});
  SafetensorsMetadata meta = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}};
  fs::path p = dir / "a.safetensors";
  write_safetensors(p, refs, meta);

  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.header_size() % 8, 0u);
  ASSERT_EQ(f.tensors().size(), refs.size());
  for (const TensorRef& r : refs) {
    const TensorView& t = f.get(r.name);
    EXPECT_EQ(t.dtype, r.dtype) << r.name;
    EXPECT_EQ(t.shape, r.shape) << r.name;
    ASSERT_EQ(t.data.size(), r.data.size()) << r.name;
    EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), r.data.begin())) << r.name;
  }
  EXPECT_EQ(f.get("scalar").numel(), 1u);
  EXPECT_EQ(f.get("empty").numel(), 0u);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_THROW(f.get("nope"), Error);
  // Tensors are listed in offset order and tile the buffer.
  uint64_t pos = 0;
  for (const TensorView& t : f.tensors()) {
    EXPECT_EQ(t.begin, pos);
    pos = t.end;
  }
  EXPECT_EQ(8 + f.header_size() + pos, fs::file_size(p));
  fs::remove_all(dir);
}

TEST(Safetensors, AsGivenOrderAndEmptyFile) {
  std::vector<uint8_t> a = iota_bytes(4), b = iota_bytes(8);
  std::vector<TensorRef> refs = {{"z", DType::kU8, {4}, a}, {"a", DType::kF64, {1}, b}};
  std::string h = safetensors_header(refs, {}, TensorOrder::kAsGiven);
  EXPECT_LT(h.find("\"z\""), h.find("\"a\""));
  std::string h2 = safetensors_header(refs);
  EXPECT_GT(h2.find("\"z\""), h2.find("\"a\""));  // F64 before U8
  std::string empty = safetensors_header({});
  SafetensorsFile f = SafetensorsFile::parse(
      {reinterpret_cast<const uint8_t*>(empty.data()), empty.size()}, "empty");
  EXPECT_TRUE(f.tensors().empty());
}

TEST(Safetensors, WriterRejectsBadInput) {
  std::vector<uint8_t> a = iota_bytes(4);
  std::vector<TensorRef> wrong_size = {{"x", DType::kF32, {2}, a}};
  EXPECT_THROW(safetensors_header(wrong_size), Error);
  std::vector<TensorRef> dup = {{"x", DType::kU8, {4}, a}, {"x", DType::kU8, {4}, a}};
  EXPECT_THROW(safetensors_header(dup), Error);
  std::vector<TensorRef> meta_name = {{"__metadata__", DType::kU8, {4}, a}};
  EXPECT_THROW(safetensors_header(meta_name), Error);
}

TEST(Safetensors, CorruptFilesGiveUsefulErrors) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(parse_error(raw_file(ok, 8)), "");

  struct Case {
    std::string bytes;
    std::string expect;
  };
  auto entry = [](const std::string& body) { return "{\"a\":" + body + "}"; };
  std::vector<Case> cases = {
      {"1234", "shorter than the 8-byte"},
      {raw_file(ok, 8, 100'000'001), "exceeds the limit"},
      {raw_file(ok, 8, ok.size() + 9), "beyond the end of the file"},
      {raw_file("[1,2,3]", 0), "must start with '{'"},
      {raw_file("{\"a\":", 0), "invalid JSON"},
      {raw_file("{\"a\xff\":1}", 0), "invalid JSON"},
      {raw_file("{\"a\":{}} x", 0), "invalid JSON"},
      {raw_file("{\"a\":1E400}", 0), "invalid JSON: number overflow"},
      {raw_file(entry("[1]"), 0), "tensor \"a\": expected an object"},
      {raw_file(entry(R"({"shape":[2],"data_offsets":[0,8]})"), 8), "missing \"dtype\""},
      {raw_file(entry(R"({"dtype":7,"shape":[2],"data_offsets":[0,8]})"), 8),
       "\"dtype\" must be a string"},
      {raw_file(entry(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), 8),
       "unknown dtype \"F33\""},
      {raw_file(entry(R"({"dtype":"F32","data_offsets":[0,8]})"), 8), "missing \"shape\""},
      {raw_file(entry(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), 8),
       "\"shape\" must be an array"},
      {raw_file(entry(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), 8),
       "non-negative integer, got -2"},
      {raw_file(entry(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), 8),
       "non-negative integer"},
      {raw_file(entry(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})"),
                8),
       "overflows"},
      {raw_file(entry(R"({"dtype":"F32","shape":[2]})"), 8), "missing \"data_offsets\""},
      {raw_file(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), 8),
       "\"data_offsets\" must be an array [begin, end]"},
      {raw_file(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), 8), "reversed"},
      {raw_file(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,16]})"), 8),
       "beyond the data buffer"},
      {raw_file(entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), 8), "needs 12 bytes"},
      {raw_file(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           8),
       "overlaps"},
      {raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "bytes [0, 4) of the data buffer belong to no tensor"},
      {raw_file(ok, 12), "bytes [8, 12) of the data buffer belong to no tensor"},
      {raw_file(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           8),
       "duplicate tensor name \"a\""},
      {raw_file(entry(R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})"), 8),
       "duplicate key \"dtype\""},
      {raw_file(R"({"__metadata__":{"k":1}})", 0), "__metadata__: \"k\" must be a string"},
      {raw_file(R"({"__metadata__":[]})", 0), "__metadata__ must be an object"},
  };
  for (const Case& c : cases) {
    std::string err = parse_error(c.bytes);
    EXPECT_NE(err.find(c.expect), std::string::npos)
        << "expected \"" << c.expect << "\" in: " << err;
    EXPECT_EQ(err.rfind("t.st: ", 0), 0u) << err;
  }
}

TEST(Safetensors, OpenNamesTheFile) {
  fs::path dir = temp_dir("name");
  write_file_atomic(dir / "bad.safetensors", raw_file("{\"a\":1}", 0));
  try {
    SafetensorsFile::open(dir / "bad.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.safetensors: header: tensor \"a\""),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(SafetensorsFile::open(dir / "missing.safetensors"), Error);
  fs::remove_all(dir);
}

TEST(Safetensors, ShardedWriteAndRead) {
  fs::path dir = temp_dir("shard");
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorRef> refs;
  for (int i = 0; i < 5; ++i) bufs.push_back(iota_bytes(40, static_cast<uint8_t>(i * 50)));
  bufs.push_back(iota_bytes(400));
  for (int i = 0; i < 6; ++i)
    refs.push_back(
        {fmt::format("w{}", i), DType::kU8, {static_cast<int64_t>(bufs[i].size())}, bufs[i]});
  // 100-byte shards: [w0 w1] [w2 w3] [w5 alone: bigger than a shard] [w4]
  auto files = write_sharded_safetensors(dir, refs, 100);
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(files[0], "model-00001-of-00004.safetensors");
  EXPECT_EQ(files[4], "model.safetensors.index.json");
  json idx = read_json_file(dir / files[4]);
  EXPECT_EQ(idx["metadata"]["total_size"], 600);
  EXPECT_EQ(idx["weight_map"]["w5"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(idx["weight_map"]["w4"], "model-00004-of-00004.safetensors");

  SafetensorsSet s = SafetensorsSet::open(dir);
  EXPECT_EQ(s.files().size(), 4u);
  ASSERT_EQ(s.tensors().size(), 6u);
  for (const TensorRef& r : refs) {
    const TensorView& t = s.get(r.name);
    EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), r.data.begin())) << r.name;
  }
  EXPECT_EQ(SafetensorsFile::open(dir / files[0]).metadata().at("format"), "pt");

  // One shard: plain model.safetensors, no index.
  fs::path one = temp_dir("one");
  EXPECT_EQ(write_sharded_safetensors(one, refs, 1 << 20),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(SafetensorsSet::open(one).tensors().size(), 6u);
  fs::remove_all(dir);
  fs::remove_all(one);
}

TEST(Safetensors, ShardIndexIsValidated) {
  fs::path dir = temp_dir("badidx");
  std::vector<uint8_t> a = iota_bytes(4);
  std::vector<TensorRef> refs = {{"x", DType::kU8, {4}, a}};
  write_safetensors(dir / "s1.safetensors", refs);
  auto expect_error = [&](const json& index, const std::string& what) {
    write_json_file(dir / "model.safetensors.index.json", index);
    try {
      SafetensorsSet::open(dir);
      ADD_FAILURE() << "no error for " << index.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error({{"weight_map", {{"x", "../s1.safetensors"}}}},
               "not a plain path inside the directory");
  expect_error({{"weight_map", {{"x", "/etc/passwd"}}}}, "not a plain path inside the directory");
  expect_error({{"weight_map", {{"x", 3}}}}, "must map to a file name");
  expect_error({{"weight_map", {{"y", "s1.safetensors"}}}}, "tensor \"y\" is not in its shard");
  expect_error({{"weight_map", {{"x", "s2.safetensors"}}}}, "s2.safetensors: cannot open");
  expect_error({{"nothing", 1}}, "missing field \"weight_map\"");
  write_json_file(dir / "model.safetensors.index.json",
                  json{{"weight_map", {{"x", "s1.safetensors"}}}});
  EXPECT_EQ(SafetensorsSet::open(dir).get("x").data.size(), 4u);
  fs::remove_all(dir);
}
