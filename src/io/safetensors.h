// safetensors (Hugging Face weights): a validating, zero-copy reader over an mmap, sharded model
// directories (model.safetensors.index.json), and writers that produce the same bytes as the Python
// `safetensors` library. Every file is untrusted: the whole header is validated (types, dtypes,
// shapes, offsets, overlaps, holes, duplicate names) before a single tensor byte is exposed.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/file.h"
#include "tensor/dtype.h"

namespace nnpipe {

// Python's safetensors refuses headers above this (MAX_HEADER_SIZE); so do we.
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

// One tensor of a file. `data` points into the file's mapping (row-major, little-endian) and may be
// unaligned for files nnpipe did not write: read it with memcpy, never through a cast pointer.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
  uint64_t begin = 0;  // data_offsets relative to the data buffer
  uint64_t end = 0;

  uint64_t numel() const;
};

using SafetensorsMetadata = std::map<std::string, std::string>;

// One .safetensors file, parsed and validated.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: "<path>: <where>: <what>".
  static SafetensorsFile open(const fs::path& path);
  // Parses bytes the caller keeps alive (fuzzing, in-memory files); `origin` names them in errors.
  static SafetensorsFile parse(std::span<const uint8_t> bytes, std::string origin);

  // Tensors in data-offset order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(std::string_view name) const;
  // Throws kNotFound "<file>: no tensor named X".
  const TensorView& get(std::string_view name) const;
  const SafetensorsMetadata& metadata() const { return metadata_; }
  const std::string& origin() const { return origin_; }
  uint64_t header_size() const { return header_size_; }  // N, the JSON length incl. padding

 private:
  MappedFile map_;
  std::string origin_;
  uint64_t header_size_ = 0;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  SafetensorsMetadata metadata_;
};

// The weights of a model: a single file, or a directory holding model.safetensors or a sharded
// model.safetensors.index.json. Tensor names are unique across shards.
class SafetensorsSet {
 public:
  // `path`: a .safetensors file or a directory.
  static SafetensorsSet open(const fs::path& path);

  const TensorView* find(std::string_view name) const;
  const TensorView& get(std::string_view name) const;
  // All tensors, sorted by name.
  std::vector<const TensorView*> tensors() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }
  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;
};

// A tensor to write: `data` must hold exactly numel * dtype_size bytes and outlive the call.
struct TensorRef {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
};

enum class TensorOrder {
  kSafetensors,  // like Python safetensors: larger-alignment dtypes first, then by name
  kAsGiven,
};

// The whole file prefix: 8-byte length + compact JSON header padded with spaces to a multiple of 8
// ("__metadata__" first, then tensors in `order`). Byte-identical to safetensors.torch.save_file
// when there is at most one metadata key (Python orders several keys randomly; we sort them).
std::string safetensors_header(std::span<const TensorRef> tensors,
                               const SafetensorsMetadata& metadata = {},
                               TensorOrder order = TensorOrder::kSafetensors);
// Writes atomically, streaming each tensor's bytes from its own buffer (no second copy).
void write_safetensors(const fs::path& path, std::span<const TensorRef> tensors,
                       const SafetensorsMetadata& metadata = {},
                       TensorOrder order = TensorOrder::kSafetensors);

// Like transformers' save_pretrained: tensors taken in the given order are packed greedily into
// shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own). One shard ->
// `<stem>.safetensors` and no index; otherwise `<stem>-0000i-of-0000n.safetensors` plus
// `<stem>.safetensors.index.json` {"metadata": {"total_parameters", "total_size"}, "weight_map"}.
// Writes into `dir` (use a StagingDir for atomicity); returns the file names written.
std::vector<std::string> write_sharded_safetensors(
    const fs::path& dir, std::span<const TensorRef> tensors, uint64_t max_shard_bytes,
    const SafetensorsMetadata& metadata = {{"format", "pt"}}, std::string_view stem = "model");

}  // namespace nnpipe
