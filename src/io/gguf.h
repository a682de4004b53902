// GGUF v3 (llama.cpp's model format): a validating, zero-copy reader over an mmap and a writer
// whose bytes equal gguf-py's GGUFWriter for the same key/value and tensor sequence.
// Every file is untrusted: the header (counts, strings, types, dims, offsets) is validated in full
// before a single tensor byte is exposed. Little-endian files only; v1/v2 are not supported.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "core/file.h"
#include "tensor/ggml_type.h"

namespace nnpipe {

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr std::string_view kGgufAlignmentKey = "general.alignment";
// llama.cpp's GGML_MAX_DIMS and GGML_MAX_NAME (a name must be shorter than this).
inline constexpr uint32_t kGgufMaxDims = 4;
inline constexpr size_t kGgufMaxName = 64;
// gguf-py writes and reads arrays of arrays (llama.cpp refuses them); we accept this much nesting.
inline constexpr int kGgufMaxArrayDepth = 8;

// Metadata value types with their file ids. The order matches GgufValue's variant alternatives.
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
inline constexpr uint32_t kGgufTypeCount = 13;

// gguf-py's names ("UINT8", ..., "FLOAT64"); from_name returns nullopt for anything else.
const char* gguf_type_name(GgufType t);
std::optional<GgufType> gguf_type_from_name(std::string_view name);

struct GgufValue;

// An array keeps its element type even when empty, so that it writes back byte-identically.
struct GgufArray {
  GgufType type = GgufType::kU8;
  std::vector<GgufValue> items;  // every item holds `type`
};

// One metadata value with its exact file type: variant index == GgufType id.
struct GgufValue {
  using Variant = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, GgufArray, uint64_t, int64_t, double>;
  Variant v;

  GgufValue() = default;
  template <typename T>
  requires std::is_constructible_v<Variant, T&&> GgufValue(T&& x)
      : v(std::forward<T>(x)) {}  // NOLINT: implicit on purpose
  GgufValue(const char* s) : v(std::string(s)) {}

  GgufType type() const { return static_cast<GgufType>(v.index()); }
  template <typename T>
  const T* get_if() const {
    return std::get_if<T>(&v);
  }
};

struct GgufKv {
  std::string key;
  GgufValue value;
};

// Bytes of a tensor of type `t` with dims `ne` (GGML order), or an error message when ne[0] is not
// a multiple of the block size, a dim is not positive, or the size overflows.
std::variant<uint64_t, std::string> ggml_nbytes(GgmlType t, std::span<const int64_t> ne);

// One tensor of a GGUF file.
struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  // Dims in GGML order: ne[0] is the innermost (contiguous) dimension, i.e. the REVERSE of the
  // PyTorch/numpy shape. A PyTorch [out, in] weight has ne = {in, out}.
  std::vector<int64_t> ne;
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;
  std::span<const uint8_t> data;  // into the mapping; unaligned for files we did not write

  uint64_t numel() const;
};

// A GGUF v3 file, parsed and validated.
class GgufFile {
 public:
  // Maps and validates `path`. Errors: "<path>: offset <n>: <what>".
  static GgufFile open(const fs::path& path);
  // Parses bytes the caller keeps alive (fuzzing, in-memory files); `origin` names them in errors.
  static GgufFile parse(std::span<const uint8_t> bytes, std::string origin);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  const std::string& origin() const { return origin_; }

  // Metadata in file order.
  const std::vector<GgufKv>& metadata() const { return kv_; }
  const GgufValue* find_value(std::string_view key) const;
  // Typed getters: kNotFound when absent, kFormat "<file>: key K: expected UINT32, got STRING"
  // when the stored type differs (no conversions: llama.cpp checks types exactly too).
  const GgufValue& value(std::string_view key) const;
  uint32_t get_u32(std::string_view key) const;
  int32_t get_i32(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  float get_f32(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const GgufArray& get_array(std::string_view key) const;
  // An array of strings (e.g. tokenizer.ggml.tokens), checked element type.
  std::vector<std::string_view> get_string_array(std::string_view key) const;

  // Tensors in file (tensor-info) order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(std::string_view name) const;
  const GgufTensor& get(std::string_view name) const;  // kNotFound when absent

 private:
  template <typename T>
  const T& typed(std::string_view key, GgufType want) const;

  MappedFile map_;
  std::string origin_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

// Collects metadata (in insertion order) and tensors, then writes a GGUF v3 file laid out like
// gguf-py's GGUFWriter: header, KVs, tensor infos, zero padding to the alignment, then each tensor
// padded to the alignment (the last one too). A "general.alignment" KV (UINT32, power of two) sets
// the alignment, as gguf-py's add_custom_alignment does. gguf-py's constructor adds
// general.architecture first: add it first here too for identical bytes.
class GgufWriter {
 public:
  // Errors (kInvalidArgument): duplicate key, a general.alignment that is not a UINT32 power of
  // two, an array mixing element types.
  void add(std::string key, GgufValue value);
  // `ne` in GGML order (see GgufTensor). `data` must hold exactly ggml_nbytes(type, ne) bytes and
  // outlive write(). Errors: duplicate or too long name, bad dims, wrong byte count.
  void add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne,
                  std::span<const uint8_t> data);

  uint32_t alignment() const { return alignment_; }
  // Everything before the data section (incl. padding to the alignment).
  std::string header() const;
  // Writes atomically, streaming each tensor from its own buffer (no second copy).
  void write(const fs::path& path) const;
  // The whole file in memory (tests, fuzz seeds).
  std::string to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::span<const uint8_t> data;
  };
  std::vector<std::string_view> parts(const std::string& header, const std::string& zeros) const;
  size_t max_pad() const;

  std::vector<GgufKv> kv_;
  std::unordered_map<std::string, size_t> keys_;
  std::vector<Tensor> tensors_;
  std::unordered_map<std::string, size_t> names_;
  uint32_t alignment_ = kGgufDefaultAlignment;
};

}  // namespace nnpipe
