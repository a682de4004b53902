#include "io/gguf.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "core/error.h"
#include "core/utf8.h"

namespace nnpipe {
namespace {

constexpr std::array<const char*, kGgufTypeCount> kTypeNames = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};

// Smallest encoding of one value of each type: bounds a count before anything is allocated.
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kString:  // u64 length
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kArray:  // element type + count
      return 12;
  }
  return 1;
}

uint64_t pad_to(uint64_t x, uint64_t align) {
  return (x + align - 1) / align * align;
}

bool is_pow2(uint64_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

// A bounds-checked little-endian cursor over the untrusted bytes. Every read names the byte
// position it failed at.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> b, const std::string& origin) : b_(b), o_(origin) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return b_.size() - pos_; }

  template <typename... Args>
  [[noreturn]] void error_at(uint64_t at, fmt::format_string<Args...> f, Args&&... args) const {
    fail(ErrorCode::kFormat, "{}: offset {}: {}", o_, at,
         fmt::format(f, std::forward<Args>(args)...));
  }

  void need(uint64_t n, std::string_view what) const {
    if (n > left())
      error_at(pos_, "{} needs {} bytes but the file ends after {} (size {})", what, n, left(),
               b_.size());
  }

  template <typename T>
  T scalar(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));  // little-endian hosts only (as llama.cpp)
    pos_ += sizeof(T);
    return v;
  }

  std::string string(std::string_view what) {
    uint64_t at = pos_;
    uint64_t n = scalar<uint64_t>(what);
    if (n > left())
      error_at(at, "{}: string length {} is beyond the end of the file ({} bytes left)", what, n,
               left());
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  std::span<const uint8_t> b_;
  std::string o_;
  uint64_t pos_ = 0;
};

GgufValue read_value(Cursor& c, GgufType t, const std::string& where, int depth);

GgufType read_type(Cursor& c, const std::string& where, const char* what) {
  uint64_t at = c.pos();
  uint32_t id = c.scalar<uint32_t>(what);
  if (id >= kGgufTypeCount) c.error_at(at, "{}: unknown {} {}", where, what, id);
  return static_cast<GgufType>(id);
}

GgufArray read_array(Cursor& c, const std::string& where, int depth) {
  if (depth >= kGgufMaxArrayDepth)
    c.error_at(c.pos(), "{}: arrays nested deeper than {}", where, kGgufMaxArrayDepth);
  GgufArray a;
  a.type = read_type(c, where, "array element type");
  uint64_t at = c.pos();
  uint64_t n = c.scalar<uint64_t>("array length");
  // Each element takes at least min_encoded_size bytes: a lying count fails before any allocation.
  if (n > c.left() / min_encoded_size(a.type))
    c.error_at(at, "{}: array of {} {} cannot fit in the {} bytes left", where, n,
               kTypeNames[static_cast<uint32_t>(a.type)], c.left());
  a.items.reserve(n);
  for (uint64_t i = 0; i < n; ++i) a.items.push_back(read_value(c, a.type, where, depth + 1));
  return a;
}

GgufValue read_value(Cursor& c, GgufType t, const std::string& where, int depth) {
  switch (t) {
    case GgufType::kU8:
      return c.scalar<uint8_t>("value");
    case GgufType::kI8:
      return c.scalar<int8_t>("value");
    case GgufType::kU16:
      return c.scalar<uint16_t>("value");
    case GgufType::kI16:
      return c.scalar<int16_t>("value");
    case GgufType::kU32:
      return c.scalar<uint32_t>("value");
    case GgufType::kI32:
      return c.scalar<int32_t>("value");
    case GgufType::kF32:
      return c.scalar<float>("value");
    case GgufType::kBool: {
      uint64_t at = c.pos();
      uint8_t b = c.scalar<uint8_t>("value");
      // Anything but 0/1 would not survive a round trip (and is not a bool gguf-py writes).
      if (b > 1) c.error_at(at, "{}: bool byte is {}, not 0 or 1", where, b);
      return b == 1;
    }
    case GgufType::kString:
      return c.string("string value");
    case GgufType::kArray:
      return read_array(c, where, depth);
    case GgufType::kU64:
      return c.scalar<uint64_t>("value");
    case GgufType::kI64:
      return c.scalar<int64_t>("value");
    case GgufType::kF64:
      return c.scalar<double>("value");
  }
  c.error_at(c.pos(), "{}: unknown value type", where);
}

std::string sq(std::string_view s) {
  return fmt::format("'{}'", s);
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  auto i = static_cast<uint32_t>(t);
  return i < kGgufTypeCount ? kTypeNames[i] : "?";
}

std::optional<GgufType> gguf_type_from_name(std::string_view name) {
  for (uint32_t i = 0; i < kGgufTypeCount; ++i)
    if (name == kTypeNames[i]) return static_cast<GgufType>(i);
  return std::nullopt;
}

std::variant<uint64_t, std::string> ggml_nbytes(GgmlType t, std::span<const int64_t> ne) {
  const GgmlTypeTraits& tr = ggml_traits(t);
  if (ne.empty() || ne.size() > kGgufMaxDims)
    return fmt::format("{} dims (must be 1..{})", ne.size(), kGgufMaxDims);
  uint64_t numel = 1;
  for (int64_t d : ne) {
    if (d <= 0) return fmt::format("dims [{}]: every dim must be positive", fmt::join(ne, ", "));
    // llama.cpp keeps element counts within int64.
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX))
      return fmt::format("dims [{}] overflow", fmt::join(ne, ", "));
  }
  if (ne[0] % tr.block_size != 0)
    return fmt::format("ne[0] = {} is not a multiple of the {} block size {}", ne[0], tr.name,
                       tr.block_size);
  uint64_t bytes = numel / tr.block_size;
  if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(tr.type_size), &bytes))
    return fmt::format("dims [{}] x {} overflow", fmt::join(ne, ", "), tr.name);
  return bytes;
}

uint64_t GgufTensor::numel() const {
  uint64_t n = 1;
  for (int64_t d : ne) n *= static_cast<uint64_t>(d);  // validated: no overflow
  return n;
}

// ---- reading ------------------------------------------------------------------------------------

GgufFile GgufFile::open(const fs::path& path) {
  MappedFile map(path);
  GgufFile f = parse(map.bytes(), path.string());
  f.map_ = std::move(map);  // the spans point into the mapping, which does not move
  return f;
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string origin) {
  GgufFile f;
  f.origin_ = std::move(origin);
  Cursor c(bytes, f.origin_);

  c.need(4, "the magic");
  if (std::memcmp(bytes.data(), "GGUF", 4) != 0)
    c.error_at(0, "not a GGUF file (magic {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\")",
               bytes[0], bytes[1], bytes[2], bytes[3]);
  c.scalar<uint32_t>("the magic");
  uint32_t version = c.scalar<uint32_t>("the version");
  if (version != kGgufVersion) {
    if (version == 1 || version == 2)
      c.error_at(4, "GGUF version {} is not supported (only version 3)", version);
    if (version == 0x03000000u)
      c.error_at(4, "big-endian GGUF is not supported (only little-endian version 3)");
    c.error_at(4, "unknown GGUF version {} (only version 3 is supported)", version);
  }
  f.version_ = version;
  uint64_t n_tensors = c.scalar<uint64_t>("the tensor count");
  uint64_t n_kv = c.scalar<uint64_t>("the key/value count");
  // key (8) + type (4) + smallest value (1); name (8) + n_dims (4) + ne (8) + type (4) + offset
  // (8).
  if (n_kv > c.left() / 13)
    c.error_at(16, "key/value count {} cannot fit in the {} bytes left", n_kv, c.left());
  if (n_tensors > c.left() / 32)
    c.error_at(8, "tensor count {} cannot fit in the {} bytes left", n_tensors, c.left());

  f.kv_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    uint64_t at = c.pos();
    std::string key = c.string(fmt::format("key {}", i));
    // gguf-py and llama.cpp read keys as UTF-8 text ("general.name"): an empty or binary key
    // cannot be looked up, printed or written back as text by them.
    if (key.empty()) c.error_at(at, "key {} is empty", i);
    if (size_t bad = utf8::find_invalid(key); bad != std::string::npos)
      c.error_at(at, "key {} is not valid UTF-8 (byte 0x{:02X} at position {})", i,
                 static_cast<unsigned char>(key[bad]), bad);
    for (unsigned char ch : key)
      if (ch < 0x20 || ch == 0x7f)
        c.error_at(at, "key {} holds the control character 0x{:02X}", i, ch);
    std::string where = fmt::format("key {}", sq(key));
    if (!f.kv_index_.emplace(key, f.kv_.size()).second) c.error_at(at, "duplicate key {}", sq(key));
    GgufType t = read_type(c, where, "value type");
    GgufValue v = read_value(c, t, where, 0);
    if (key == kGgufAlignmentKey) {
      const uint32_t* a = v.get_if<uint32_t>();
      if (!a) c.error_at(at, "{}: expected UINT32, got {}", where, gguf_type_name(v.type()));
      if (!is_pow2(*a)) c.error_at(at, "{}: {} is not a power of two", where, *a);
      f.alignment_ = *a;
    }
    f.kv_.push_back({std::move(key), std::move(v)});
  }

  std::vector<uint64_t> info_pos;
  f.tensors_.reserve(n_tensors);
  info_pos.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    uint64_t at = c.pos();
    info_pos.push_back(at);
    GgufTensor t;
    t.name = c.string(fmt::format("tensor {} name", i));
    std::string where = fmt::format("tensor {}", sq(t.name));
    if (t.name.size() >= kGgufMaxName)
      c.error_at(at, "{}: name is {} bytes (llama.cpp's limit is {})", where, t.name.size(),
                 kGgufMaxName - 1);
    if (!f.index_.emplace(t.name, f.tensors_.size()).second)
      c.error_at(at, "duplicate tensor name {}", sq(t.name));
    uint64_t dims_at = c.pos();
    uint32_t n_dims = c.scalar<uint32_t>("n_dims");
    if (n_dims < 1 || n_dims > kGgufMaxDims)
      c.error_at(dims_at, "{}: n_dims {} (must be 1..{})", where, n_dims, kGgufMaxDims);
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(c.scalar<int64_t>("a dim"));
    uint64_t type_at = c.pos();
    uint32_t type_id = c.scalar<uint32_t>("the ggml type");
    if (!ggml_type_traits(type_id))
      c.error_at(type_at, "{}: unknown ggml type id {}", where, type_id);
    t.type = static_cast<GgmlType>(type_id);
    auto size = ggml_nbytes(t.type, t.ne);
    if (auto* msg = std::get_if<std::string>(&size)) c.error_at(dims_at, "{}: {}", where, *msg);
    t.nbytes = std::get<uint64_t>(size);
    uint64_t off_at = c.pos();
    t.offset = c.scalar<uint64_t>("the data offset");
    if (t.offset % f.alignment_ != 0)
      c.error_at(off_at, "{}: data offset {} is not a multiple of the alignment {}", where,
                 t.offset, f.alignment_);
    f.tensors_.push_back(std::move(t));
  }

  f.data_offset_ = pad_to(c.pos(), f.alignment_);
  uint64_t data_size = bytes.size() > f.data_offset_ ? bytes.size() - f.data_offset_ : 0;
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    GgufTensor& t = f.tensors_[i];
    uint64_t end = 0;
    if (__builtin_add_overflow(t.offset, t.nbytes, &end) || end > data_size ||
        bytes.size() < f.data_offset_) {
      uint64_t a = f.data_offset_ + std::min(t.offset, UINT64_MAX - f.data_offset_);
      c.error_at(info_pos[i], "tensor {}: data [{}, {}) beyond the end of the file (size {})",
                 sq(t.name), a, a + std::min(t.nbytes, UINT64_MAX - a), bytes.size());
    }
    t.data = bytes.subspan(f.data_offset_ + t.offset, t.nbytes);
  }
  // Sorted by offset, each tensor must end before the next one starts.
  std::vector<size_t> order(f.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return f.tensors_[a].offset < f.tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensor& p = f.tensors_[order[k - 1]];
    const GgufTensor& t = f.tensors_[order[k]];
    if (t.offset < p.offset + p.nbytes)
      c.error_at(info_pos[order[k]], "tensor {}: data [{}, {}) overlaps tensor {} [{}, {})",
                 sq(t.name), t.offset, t.offset + t.nbytes, sq(p.name), p.offset,
                 p.offset + p.nbytes);
  }
  return f;
}

const GgufValue* GgufFile::find_value(std::string_view key) const {
  auto it = kv_index_.find(std::string(key));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufValue& GgufFile::value(std::string_view key) const {
  if (const GgufValue* v = find_value(key)) return *v;
  fail(ErrorCode::kNotFound, "{}: no key {}", origin_, sq(key));
}

template <typename T>
const T& GgufFile::typed(std::string_view key, GgufType want) const {
  const GgufValue& v = value(key);
  if (const T* p = v.get_if<T>()) return *p;
  fail(ErrorCode::kFormat, "{}: key {}: expected {}, got {}", origin_, sq(key),
       gguf_type_name(want), gguf_type_name(v.type()));
}

uint32_t GgufFile::get_u32(std::string_view key) const {
  return typed<uint32_t>(key, GgufType::kU32);
}
int32_t GgufFile::get_i32(std::string_view key) const {
  return typed<int32_t>(key, GgufType::kI32);
}
uint64_t GgufFile::get_u64(std::string_view key) const {
  return typed<uint64_t>(key, GgufType::kU64);
}
float GgufFile::get_f32(std::string_view key) const {
  return typed<float>(key, GgufType::kF32);
}
bool GgufFile::get_bool(std::string_view key) const {
  return typed<bool>(key, GgufType::kBool);
}
const std::string& GgufFile::get_string(std::string_view key) const {
  return typed<std::string>(key, GgufType::kString);
}
const GgufArray& GgufFile::get_array(std::string_view key) const {
  return typed<GgufArray>(key, GgufType::kArray);
}

std::vector<std::string_view> GgufFile::get_string_array(std::string_view key) const {
  const GgufArray& a = get_array(key);
  if (a.type != GgufType::kString)
    fail(ErrorCode::kFormat, "{}: key {}: expected an array of STRING, got an array of {}", origin_,
         sq(key), gguf_type_name(a.type));
  std::vector<std::string_view> out;
  out.reserve(a.items.size());
  for (const GgufValue& v : a.items) out.push_back(*v.get_if<std::string>());
  return out;
}

const GgufTensor* GgufFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::get(std::string_view name) const {
  if (const GgufTensor* t = find(name)) return *t;
  fail(ErrorCode::kNotFound, "{}: no tensor named {}", origin_, sq(name));
}

// ---- writing ------------------------------------------------------------------------------------

namespace {

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void check_array(const GgufArray& a, const std::string& key, int depth) {
  if (depth >= kGgufMaxArrayDepth)
    fail(ErrorCode::kInvalidArgument, "gguf writer: key {}: arrays nested deeper than {}", sq(key),
         kGgufMaxArrayDepth);
  for (const GgufValue& v : a.items) {
    if (v.type() != a.type)
      fail(ErrorCode::kInvalidArgument, "gguf writer: key {}: an array of {} holds a {} element",
           sq(key), gguf_type_name(a.type), gguf_type_name(v.type()));
    if (const GgufArray* inner = v.get_if<GgufArray>()) check_array(*inner, key, depth + 1);
  }
}

void put_value(std::string& out, const GgufValue& value) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          put_string(out, x);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          put<uint32_t>(out, static_cast<uint32_t>(x.type));
          put<uint64_t>(out, x.items.size());
          for (const GgufValue& item : x.items) put_value(out, item);
        } else if constexpr (std::is_same_v<T, bool>) {
          out.push_back(x ? 1 : 0);
        } else {
          put<T>(out, x);
        }
      },
      value.v);
}

}  // namespace

void GgufWriter::add(std::string key, GgufValue value) {
  if (keys_.count(key)) fail(ErrorCode::kInvalidArgument, "gguf writer: duplicate key {}", sq(key));
  if (const GgufArray* a = value.get_if<GgufArray>()) check_array(*a, key, 0);
  if (key == kGgufAlignmentKey) {
    const uint32_t* v = value.get_if<uint32_t>();
    if (!v || !is_pow2(*v))
      fail(ErrorCode::kInvalidArgument, "gguf writer: {} must be a UINT32 power of two",
           kGgufAlignmentKey);
    alignment_ = *v;
  }
  keys_.emplace(key, kv_.size());
  kv_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne,
                            std::span<const uint8_t> data) {
  if (!ggml_type_traits(static_cast<uint32_t>(type)))
    fail(ErrorCode::kInvalidArgument, "gguf writer: tensor {}: unknown ggml type id {}", sq(name),
         static_cast<uint32_t>(type));
  if (name.size() >= kGgufMaxName)
    fail(ErrorCode::kInvalidArgument,
         "gguf writer: tensor {}: name is {} bytes (llama.cpp's limit is {})", sq(name),
         name.size(), kGgufMaxName - 1);
  if (names_.count(name))
    fail(ErrorCode::kInvalidArgument, "gguf writer: duplicate tensor name {}", sq(name));
  auto size = ggml_nbytes(type, ne);
  if (auto* msg = std::get_if<std::string>(&size))
    fail(ErrorCode::kInvalidArgument, "gguf writer: tensor {}: {}", sq(name), *msg);
  if (std::get<uint64_t>(size) != data.size())
    fail(ErrorCode::kInvalidArgument,
         "gguf writer: tensor {}: dims [{}] x {} need {} bytes, got {}", sq(name),
         fmt::join(ne, ", "), ggml_traits(type).name, std::get<uint64_t>(size), data.size());
  names_.emplace(name, tensors_.size());
  tensors_.push_back({std::move(name), type, std::move(ne), data});
}

std::string GgufWriter::header() const {
  std::string out;
  out += "GGUF";
  put<uint32_t>(out, kGgufVersion);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size());
  for (const GgufKv& kv : kv_) {
    put_string(out, kv.key);
    put<uint32_t>(out, static_cast<uint32_t>(kv.value.type()));
    put_value(out, kv.value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(out, static_cast<uint64_t>(d));
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset += pad_to(t.data.size(), alignment_);
  }
  out.resize(pad_to(out.size(), alignment_), '\0');
  return out;
}

std::vector<std::string_view> GgufWriter::parts(const std::string& header,
                                                const std::string& zeros) const {
  std::vector<std::string_view> p;
  p.reserve(1 + 2 * tensors_.size());
  p.emplace_back(header);
  for (const Tensor& t : tensors_) {
    p.emplace_back(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    // Like gguf-py, every tensor (the last one too) is padded to the alignment.
    if (uint64_t pad = pad_to(t.data.size(), alignment_) - t.data.size())
      p.emplace_back(zeros.data(), pad);
  }
  return p;
}

// Sized by the tensors, not the alignment: a 1 GiB alignment must not allocate 1 GiB.
size_t GgufWriter::max_pad() const {
  uint64_t m = 0;
  for (const Tensor& t : tensors_)
    m = std::max(m, pad_to(t.data.size(), alignment_) - t.data.size());
  return m;
}

void GgufWriter::write(const fs::path& path) const {
  std::string h = header();
  std::string zeros(max_pad(), '\0');
  write_file_atomic(path, parts(h, zeros));
}

std::string GgufWriter::to_bytes() const {
  std::string h = header();
  std::string zeros(max_pad(), '\0');
  std::string out;
  for (std::string_view p : parts(h, zeros)) out += p;
  return out;
}

}  // namespace nnpipe
