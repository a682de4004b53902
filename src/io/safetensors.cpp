#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/json.h"

namespace nnpipe {
namespace {

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void put_u64_le(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Rank of the dtype in the Rust `safetensors::Dtype` enum; save_file sorts by it, descending, so
// that larger alignments come first. Verified against safetensors 0.8 output in the conformance
// test.
int safetensors_dtype_rank(DType t) {
  switch (t) {
    case DType::kBool:
      return 0;
    case DType::kU8:
      return 4;
    case DType::kI8:
      return 5;
    case DType::kF8E5M2:
      return 6;
    case DType::kF8E4M3:
      return 7;
    case DType::kI16:
      return 9;
    case DType::kU16:
      return 10;
    case DType::kF16:
      return 11;
    case DType::kBF16:
      return 12;
    case DType::kI32:
      return 13;
    case DType::kU32:
      return 14;
    case DType::kF32:
      return 15;
    case DType::kF64:
      return 17;
    case DType::kI64:
      return 18;
    case DType::kU64:
      return 19;
    default:  // GGML block types: never safetensors dtypes (dtype_from_name refuses them)
      return 0;
  }
}

// numel and byte size with overflow checks; nullopt on overflow.
std::optional<uint64_t> checked_numel(std::span<const int64_t> shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

std::string shape_str(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// The header as JSON, failing on duplicate keys at any depth: nlohmann would silently keep the last
// one, and two tensors with one name make the file ambiguous.
json parse_header_json(std::string_view text, const std::string& where) {
  struct Level {
    std::set<std::string> keys;
    std::string name;  // the key this object is the value of ("" at the root)
  };
  std::vector<Level> stack;
  std::string last_key;
  json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        stack.push_back({{}, stack.empty() ? std::string() : last_key});
        break;
      case json::parse_event_t::object_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        last_key = parsed.get<std::string>();
        Level& top = stack.back();
        if (!top.keys.insert(last_key).second) {
          if (stack.size() == 1)
            fail(ErrorCode::kFormat, "{}: duplicate tensor name \"{}\"", where, last_key);
          fail(ErrorCode::kFormat, "{}: \"{}\": duplicate key \"{}\"", where, top.name, last_key);
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), cb);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (auto k = what.find("syntax error"); k != std::string::npos) what = what.substr(k);
    // nlohmann quotes the raw bytes it last read, which may be invalid UTF-8: leave them out.
    if (auto k = what.find("; last read"); k != std::string::npos) what.erase(k);
    size_t off = e.byte > 0 ? e.byte - 1 : 0;
    fail(ErrorCode::kFormat, "{}: invalid JSON at byte {}: {}", where, off, what);
  } catch (const json::exception& e) {
    // e.g. out_of_range 406: a number literal too large for a double ("1E400").
    std::string what = e.what();
    if (auto k = what.find("] "); k != std::string::npos) what = what.substr(k + 2);
    fail(ErrorCode::kFormat, "{}: invalid JSON: {}", where, what);
  }
}

uint64_t require_u64(const json& v, const std::string& where, const char* what) {
  if (!v.is_number_unsigned())
    fail(ErrorCode::kFormat, "{}: {} must be a non-negative integer, got {}", where, what,
         v.is_number_integer() ? v.dump() : json_type_name(v));
  return v.get<uint64_t>();
}

TensorView parse_entry(const std::string& name, const json& e, uint64_t buffer_size,
                       const std::string& hdr) {
  std::string where = fmt::format("{}: tensor \"{}\"", hdr, name);
  if (!e.is_object())
    fail(ErrorCode::kFormat, "{}: expected an object, got {}", where, json_type_name(e));
  TensorView t;
  t.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end()) fail(ErrorCode::kFormat, "{}: missing \"dtype\"", where);
  if (!dt->is_string())
    fail(ErrorCode::kFormat, "{}: \"dtype\" must be a string, got {}", where, json_type_name(*dt));
  auto d = dtype_from_name(dt->get_ref<const std::string&>());
  if (!d) fail(ErrorCode::kFormat, "{}: unknown dtype \"{}\"", where, dt->get<std::string>());
  t.dtype = *d;

  auto sh = e.find("shape");
  if (sh == e.end()) fail(ErrorCode::kFormat, "{}: missing \"shape\"", where);
  if (!sh->is_array())
    fail(ErrorCode::kFormat, "{}: \"shape\" must be an array, got {}", where, json_type_name(*sh));
  for (const json& dim : *sh) {
    uint64_t v = require_u64(dim, where, "each \"shape\" entry");
    if (v > static_cast<uint64_t>(INT64_MAX))
      fail(ErrorCode::kFormat, "{}: shape dimension {} is too large", where, v);
    t.shape.push_back(static_cast<int64_t>(v));
  }

  auto off = e.find("data_offsets");
  if (off == e.end()) fail(ErrorCode::kFormat, "{}: missing \"data_offsets\"", where);
  if (!off->is_array() || off->size() != 2)
    fail(ErrorCode::kFormat, "{}: \"data_offsets\" must be an array [begin, end], got {}", where,
         off->dump());
  t.begin = require_u64((*off)[0], where, "data_offsets begin");
  t.end = require_u64((*off)[1], where, "data_offsets end");
  if (t.begin > t.end)
    fail(ErrorCode::kFormat, "{}: data_offsets reversed: begin {} > end {}", where, t.begin, t.end);
  if (t.end > buffer_size)
    fail(ErrorCode::kFormat, "{}: data_offsets end {} is beyond the data buffer ({} bytes)", where,
         t.end, buffer_size);

  auto n = checked_numel(t.shape);
  uint64_t bytes = 0;
  if (!n || __builtin_mul_overflow(*n, static_cast<uint64_t>(dtype_size(t.dtype)), &bytes))
    fail(ErrorCode::kFormat, "{}: shape {} overflows", where, shape_str(t.shape));
  if (bytes != t.end - t.begin)
    fail(ErrorCode::kFormat, "{}: shape {} x {} needs {} bytes but data_offsets [{}, {}] hold {}",
         where, shape_str(t.shape), dtype_name(t.dtype), bytes, t.begin, t.end, t.end - t.begin);
  return t;
}

}  // namespace

uint64_t TensorView::numel() const {
  return checked_numel(shape).value_or(0);
}

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  MappedFile map(path);
  SafetensorsFile f = parse(map.bytes(), path.string());
  f.map_ = std::move(map);  // the views point into the mapping, which does not move
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::span<const uint8_t> bytes, std::string origin) {
  SafetensorsFile f;
  f.origin_ = std::move(origin);
  const std::string& o = f.origin_;
  if (bytes.size() < 8)
    fail(ErrorCode::kFormat, "{}: header: file is {} bytes, shorter than the 8-byte length prefix",
         o, bytes.size());
  uint64_t n = read_u64_le(bytes.data());
  if (n > kSafetensorsMaxHeader)
    fail(ErrorCode::kFormat, "{}: header: length {} exceeds the limit of {} bytes", o, n,
         kSafetensorsMaxHeader);
  if (n > bytes.size() - 8)
    fail(ErrorCode::kFormat, "{}: header: length {} is beyond the end of the file ({} bytes)", o, n,
         bytes.size());
  f.header_size_ = n;
  std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), n);
  std::string hdr = o + ": header";
  // Python safetensors insists on '{' first (InvalidHeaderStart); so do we.
  if (text.empty() || text.front() != '{')
    fail(ErrorCode::kFormat, "{}: must start with '{{'", hdr);
  json h = parse_header_json(text, hdr);
  if (!h.is_object())
    fail(ErrorCode::kFormat, "{}: expected a JSON object, got {}", hdr, json_type_name(h));

  std::span<const uint8_t> buffer = bytes.subspan(8 + n);
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object())
        fail(ErrorCode::kFormat, "{}: __metadata__ must be an object, got {}", hdr,
             json_type_name(*it));
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          fail(ErrorCode::kFormat, "{}: __metadata__: \"{}\" must be a string, got {}", hdr,
               m.key(), json_type_name(*m));
        f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    f.tensors_.push_back(parse_entry(it.key(), *it, buffer.size(), hdr));
  }

  // Sorted by offset the tensors must tile the buffer exactly: no overlap, no hole, no tail.
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorView& a, const TensorView& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const TensorView* prev = nullptr;
  for (TensorView& t : f.tensors_) {
    if (t.begin < pos)
      fail(ErrorCode::kFormat, "{}: tensor \"{}\" [{}, {}] overlaps tensor \"{}\" [{}, {}]", hdr,
           t.name, t.begin, t.end, prev->name, prev->begin, prev->end);
    if (t.begin > pos)
      fail(ErrorCode::kFormat,
           "{}: bytes [{}, {}) of the data buffer belong to no tensor (before \"{}\")", hdr, pos,
           t.begin, t.name);
    t.data = buffer.subspan(t.begin, t.end - t.begin);
    pos = t.end;
    prev = &t;
  }
  if (pos != buffer.size())
    fail(ErrorCode::kFormat, "{}: bytes [{}, {}) of the data buffer belong to no tensor", hdr, pos,
         buffer.size());
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  return f;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::get(std::string_view name) const {
  if (const TensorView* t = find(name)) return *t;
  fail(ErrorCode::kNotFound, "{}: no tensor named \"{}\"", origin_, name);
}

// ---- sharded sets -------------------------------------------------------------------------------

SafetensorsSet SafetensorsSet::open(const fs::path& path) {
  SafetensorsSet s;
  s.origin_ = path.string();
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    s.files_.push_back(SafetensorsFile::open(path));
    for (const TensorView& t : s.files_[0].tensors()) s.by_name_.emplace(t.name, &t);
    return s;
  }
  fs::path index_path = path / "model.safetensors.index.json";
  if (!fs::exists(index_path, ec)) {
    fs::path single = path / "model.safetensors";
    if (!fs::exists(single, ec))
      fail(ErrorCode::kNotFound,
           "{}: neither model.safetensors nor model.safetensors.index.json found", path.string());
    return open(single);
  }
  std::string o = index_path.string();
  json idx = read_json_file(index_path);
  const json& wm = require_field(idx, "weight_map", o);
  if (!wm.is_object())
    fail(ErrorCode::kFormat, "{}: weight_map must be an object, got {}", o, json_type_name(wm));
  // Validate every shard name before opening anything: it must stay inside the directory.
  std::map<std::string, std::vector<std::string>> shard_tensors;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it->is_string())
      fail(ErrorCode::kFormat, "{}: weight_map: \"{}\" must map to a file name, got {}", o,
           it.key(), json_type_name(*it));
    const std::string& file = it->get_ref<const std::string&>();
    fs::path rel(file);
    bool bad = file.empty() || rel.is_absolute() || rel.has_root_name();
    for (const auto& part : rel)
      if (part == ".." || part == ".") bad = true;
    if (bad)
      fail(ErrorCode::kFormat,
           "{}: weight_map: \"{}\": file \"{}\" is not a plain path inside the directory", o,
           it.key(), file);
    shard_tensors[file].push_back(it.key());
  }
  s.files_.reserve(shard_tensors.size());  // by_name_ points into files_: no reallocation after
  for (const auto& [file, names] : shard_tensors) {
    s.files_.push_back(SafetensorsFile::open(path / file));
    const SafetensorsFile& f = s.files_.back();
    for (const std::string& name : names) {
      const TensorView* t = f.find(name);
      if (!t)
        fail(ErrorCode::kFormat, "{}: weight_map: tensor \"{}\" is not in its shard {}", o, name,
             f.origin());
      s.by_name_.emplace(name, t);
    }
  }
  return s;
}

const TensorView* SafetensorsSet::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& SafetensorsSet::get(std::string_view name) const {
  if (const TensorView* t = find(name)) return *t;
  fail(ErrorCode::kNotFound, "{}: no tensor named \"{}\"", origin_, name);
}

std::vector<const TensorView*> SafetensorsSet::tensors() const {
  std::vector<const TensorView*> out;
  out.reserve(by_name_.size());
  for (const auto& [name, t] : by_name_) out.push_back(t);
  return out;
}

// ---- writing ------------------------------------------------------------------------------------

namespace {

std::string json_string(std::string_view s, const char* what) {
  try {
    return json(s).dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::type_error&) {
    fail(ErrorCode::kInvalidArgument, "safetensors writer: {} is not valid UTF-8", what);
  }
}

std::vector<const TensorRef*> ordered(std::span<const TensorRef> tensors, TensorOrder order) {
  std::vector<const TensorRef*> v;
  v.reserve(tensors.size());
  for (const TensorRef& t : tensors) v.push_back(&t);
  if (order == TensorOrder::kSafetensors)
    std::stable_sort(v.begin(), v.end(), [](const TensorRef* a, const TensorRef* b) {
      int ra = safetensors_dtype_rank(a->dtype), rb = safetensors_dtype_rank(b->dtype);
      return ra != rb ? ra > rb : a->name < b->name;
    });
  return v;
}

void check_tensors(std::span<const TensorRef> tensors) {
  std::set<std::string_view> names;
  for (const TensorRef& t : tensors) {
    if (t.name == "__metadata__")
      fail(ErrorCode::kInvalidArgument,
           "safetensors writer: \"__metadata__\" is not a tensor name");
    if (!names.insert(t.name).second)
      fail(ErrorCode::kInvalidArgument, "safetensors writer: duplicate tensor name \"{}\"", t.name);
    auto n = checked_numel(t.shape);
    uint64_t bytes = 0;
    if (!n || __builtin_mul_overflow(*n, static_cast<uint64_t>(dtype_size(t.dtype)), &bytes) ||
        bytes != t.data.size())
      fail(ErrorCode::kInvalidArgument,
           "safetensors writer: tensor \"{}\": shape {} x {} does not match its {} data bytes",
           t.name, shape_str(t.shape), dtype_name(t.dtype), t.data.size());
  }
}

}  // namespace

std::string safetensors_header(std::span<const TensorRef> tensors,
                               const SafetensorsMetadata& metadata, TensorOrder order) {
  check_tensors(tensors);
  // Compact JSON exactly as serde_json writes it: no spaces, "__metadata__" first.
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_string(k, "a metadata key");
      h += ':';
      h += json_string(v, "a metadata value");
    }
    h += '}';
  }
  uint64_t off = 0;
  for (const TensorRef* t : ordered(tensors, order)) {
    if (h.size() > 1) h += ',';
    h += json_string(t->name, "a tensor name");
    h += fmt::format(R"(:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})",
                     dtype_name(t->dtype), fmt::join(t->shape, ","), off, off + t->data.size());
    off += t->data.size();
  }
  h += '}';
  // Pad with spaces so that the data buffer starts 8-byte aligned (8 + N, N a multiple of 8).
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + h.size());
  put_u64_le(out, h.size());
  out += h;
  return out;
}

void write_safetensors(const fs::path& path, std::span<const TensorRef> tensors,
                       const SafetensorsMetadata& metadata, TensorOrder order) {
  std::string header = safetensors_header(tensors, metadata, order);
  std::vector<std::string_view> parts;
  parts.reserve(tensors.size() + 1);
  parts.emplace_back(header);
  for (const TensorRef* t : ordered(tensors, order))
    parts.emplace_back(reinterpret_cast<const char*>(t->data.data()), t->data.size());
  write_file_atomic(path, parts);
}

std::vector<std::string> write_sharded_safetensors(const fs::path& dir,
                                                   std::span<const TensorRef> tensors,
                                                   uint64_t max_shard_bytes,
                                                   const SafetensorsMetadata& metadata,
                                                   std::string_view stem) {
  check_tensors(tensors);
  // huggingface_hub split_torch_state_dict_into_shards: greedy, in the given order.
  std::vector<std::vector<TensorRef>> shards;
  std::vector<TensorRef> current;
  uint64_t current_size = 0, total_size = 0, total_params = 0;
  for (const TensorRef& t : tensors) {
    uint64_t size = t.data.size();
    total_size += size;
    total_params += checked_numel(t.shape).value_or(0);
    if (size > max_shard_bytes) {
      shards.push_back({t});
      continue;
    }
    if (current_size + size > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(t);
    current_size += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  std::vector<std::string> files;
  if (shards.size() == 1) {
    files.push_back(std::string(stem) + ".safetensors");
    write_safetensors(dir / files[0], shards[0], metadata);
    return files;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = fmt::format("{}-{:05d}-of-{:05d}.safetensors", stem, i + 1, shards.size());
    write_safetensors(dir / name, shards[i], metadata);
    for (const TensorRef& t : shards[i]) weight_map[t.name] = name;
    files.push_back(std::move(name));
  }
  json index = {{"metadata", {{"total_parameters", total_params}, {"total_size", total_size}}},
                {"weight_map", std::move(weight_map)}};
  std::string index_name = std::string(stem) + ".safetensors.index.json";
  write_json_file(dir / index_name, index);
  files.push_back(index_name);
  return files;
}

}  // namespace nnpipe
