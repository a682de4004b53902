#include "model/bnb_checkpoint.h"

#include <cstring>
#include <set>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "quant/bnb.h"
#include "tensor/convert.h"

namespace nnpipe {

namespace {

template <typename T>
std::vector<T> read_as(const TensorView& t) {
  std::vector<T> v(t.data.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), t.data.data(), v.size() * sizeof(T));
  return v;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += fmt::format("{}{}", i ? ", " : "", s[i]);
  return r + "]";
}

class Reader {
 public:
  Reader(const SafetensorsSet& w, std::string origin) : w_(w), origin_(std::move(origin)) {}

  // The tensor `name` with the expected dtype and shape; marks it as used.
  const TensorView& get(const std::string& name, DType dtype, const std::vector<int64_t>* shape) {
    const TensorView* t = w_.find(name);
    if (!t) fail(ErrorCode::kFormat, "{}: missing tensor {}", origin_, name);
    if (t->dtype != dtype)
      fail(ErrorCode::kFormat, "{}: {}: dtype {}, expected {}", origin_, name, dtype_name(t->dtype),
           dtype_name(dtype));
    if (shape && t->shape != *shape)
      fail(ErrorCode::kFormat, "{}: {}: shape {}, expected {}", origin_, name, shape_str(t->shape),
           shape_str(*shape));
    used_.insert(name);
    return *t;
  }
  bool has(const std::string& name) const { return w_.find(name) != nullptr; }
  const std::string& origin() const { return origin_; }
  const std::set<std::string>& used() const { return used_; }

 private:
  const SafetensorsSet& w_;
  std::string origin_;
  std::set<std::string> used_;
};

std::vector<float> load_int8(Reader& r, const WeightSpec& spec) {
  const std::string base = spec.name.substr(0, spec.name.size() - 7);  // drop ".weight"
  const std::vector<int64_t> rows = {spec.shape[0]};
  const std::vector<int8_t> cb = read_as<int8_t>(r.get(spec.name, DType::kI8, &spec.shape));
  const std::vector<float> scb = read_as<float>(r.get(base + ".SCB", DType::kF32, &rows));
  if (r.has(base + ".weight_format")) {
    const TensorView& f = r.get(base + ".weight_format", DType::kU8, nullptr);
    if (f.data.size() != 1 || f.data[0] != 0)  // 0 = "row", the only layout bitsandbytes saves
      fail(ErrorCode::kUnsupported, "{}: {}.weight_format: only 0 (row-major) is supported",
           r.origin(), base);
  }
  std::vector<float> out(cb.size());
  bnb_dequantize_int8(cb, scb, spec.shape[1], out);
  return out;
}

std::vector<float> load_4bit(Reader& r, const WeightSpec& spec, const std::string& qs_key) {
  const std::string& name = spec.name;
  const std::string where = r.origin() + ": " + qs_key;
  const TensorView& qs_t = r.get(qs_key, DType::kU8, nullptr);
  const json qs = parse_json(
      std::string_view(reinterpret_cast<const char*>(qs_t.data.data()), qs_t.data.size()), where);
  if (!qs.is_object()) fail(ErrorCode::kFormat, "{}: expected a JSON object", where);
  auto field = [&](const char* k) -> const json& { return require_field(qs, k, where); };
  const std::string type_name =
      field("quant_type").is_string() ? field("quant_type").get<std::string>() : "";
  if (type_name != "nf4" && type_name != "fp4")
    fail(ErrorCode::kUnsupported, "{}: quant_type {} (expected nf4 or fp4)", where,
         field("quant_type").dump());
  if (qs_key.substr(qs_key.size() - 3) != type_name)
    fail(ErrorCode::kFormat, "{}: quant_type \"{}\" differs from the key's", where, type_name);
  const Bnb4bitType type = type_name == "nf4" ? Bnb4bitType::kNF4 : Bnb4bitType::kFP4;
  const json& bs = field("blocksize");
  if (!bs.is_number_integer() || !bnb4bit_valid_blocksize(bs.get<int64_t>()))
    fail(ErrorCode::kFormat, "{}: blocksize {} (expected 32, 64, ..., 4096)", where, bs.dump());
  const int64_t blocksize = bs.get<int64_t>();
  const json& shape = field("shape");
  if (!shape.is_array() || shape.size() != spec.shape.size() ||
      !std::equal(spec.shape.begin(), spec.shape.end(), shape.begin(),
                  [](int64_t a, const json& b) { return b.is_number_integer() && b == a; }))
    fail(ErrorCode::kFormat, "{}: shape {}, expected {}", where, shape.dump(),
         shape_str(spec.shape));
  const int64_t n = spec.shape[0] * spec.shape[1];
  const int64_t blocks = (n + blocksize - 1) / blocksize;

  const TensorView& w = r.get(name, DType::kU8, nullptr);
  if (w.numel() != static_cast<uint64_t>((n + 1) / 2))
    fail(ErrorCode::kFormat, "{}: {}: {} bytes, expected {} for shape {}", r.origin(), name,
         w.numel(), (n + 1) / 2, shape_str(spec.shape));
  const std::vector<int64_t> q_shape = {16};
  const std::vector<float> qmap = read_as<float>(r.get(name + ".quant_map", DType::kF32, &q_shape));
  const auto& code = bnb4bit_code(type);
  for (size_t i = 0; i < 16; ++i)
    if (std::memcmp(&qmap[i], &code[i], 4) != 0)
      fail(ErrorCode::kUnsupported, "{}: {}.quant_map[{}] = {} is not bitsandbytes' {} code ({})",
           r.origin(), name, i, qmap[i], type_name, code[i]);

  const std::vector<int64_t> abs_shape = {blocks};
  std::vector<float> absmax(static_cast<size_t>(blocks));
  if (r.has(name + ".nested_absmax")) {
    const json& nbs = field("nested_blocksize");
    if (!nbs.is_number_integer() || nbs.get<int64_t>() <= 0)
      fail(ErrorCode::kFormat, "{}: nested_blocksize {}", where, nbs.dump());
    if (field("nested_dtype") != "float32")
      fail(ErrorCode::kUnsupported, "{}: nested_dtype {} (expected \"float32\")", where,
           field("nested_dtype").dump());
    const json& off = field("nested_offset");
    if (!off.is_number()) fail(ErrorCode::kFormat, "{}: nested_offset {}", where, off.dump());
    const int64_t nblocks = (blocks + nbs.get<int64_t>() - 1) / nbs.get<int64_t>();
    const std::vector<int64_t> nabs_shape = {nblocks}, map_shape = {256};
    const std::vector<uint8_t> q =
        read_as<uint8_t>(r.get(name + ".absmax", DType::kU8, &abs_shape));
    const std::vector<float> nabs =
        read_as<float>(r.get(name + ".nested_absmax", DType::kF32, &nabs_shape));
    const std::vector<float> nmap =
        read_as<float>(r.get(name + ".nested_quant_map", DType::kF32, &map_shape));
    // torch.tensor(float(offset)) is f32: the JSON double rounds to float.
    bnb_dequantize_nested(q, nabs, nmap, nbs.get<int64_t>(), static_cast<float>(off.get<double>()),
                          absmax);
  } else {
    absmax = read_as<float>(r.get(name + ".absmax", DType::kF32, &abs_shape));
  }
  // dequantize_4bit returns quant_state's dtype (the weight's dtype when it was quantized).
  const json& dt = field("dtype");
  const auto dtype = dt.is_string() ? dtype_from_torch_name(dt.get<std::string>()) : std::nullopt;
  if (!dtype || (*dtype != DType::kF32 && *dtype != DType::kBF16 && *dtype != DType::kF16))
    fail(ErrorCode::kFormat, "{}: dtype {} (expected float32, bfloat16 or float16)", where,
         dt.dump());
  std::vector<float> out(static_cast<size_t>(n));
  bnb_dequantize_4bit(w.data, absmax, blocksize, type, out);
  if (*dtype != DType::kF32) out = to_f32(*dtype, from_f32(out, *dtype));
  return out;
}

}  // namespace

bool is_bnb_config(const json& config) {
  if (!config.is_object()) return false;
  auto it = config.find("quantization_config");
  return it != config.end() && it->is_object() &&
         it->value("quant_method", json()) == "bitsandbytes";
}

bool is_bnb_checkpoint(const fs::path& dir) {
  std::error_code ec;
  const fs::path p = dir / "config.json";
  if (!fs::is_regular_file(p, ec)) return false;
  try {
    return is_bnb_config(read_json_file(p));
  } catch (const Error&) {
    return false;  // the regular loader reports the malformed file
  }
}

DequantizedModel load_bnb_checkpoint(const fs::path& dir) {
  const fs::path cfg_path = dir / "config.json";
  const json cfg = read_json_file(cfg_path);
  if (!is_bnb_config(cfg))
    fail(ErrorCode::kFormat, "{}: no bitsandbytes quantization_config", cfg_path.string());
  const json& qc = cfg["quantization_config"];
  const bool in4 = qc.value("load_in_4bit", false) == true;
  const bool in8 = qc.value("load_in_8bit", false) == true;
  if (in4 == in8)
    fail(ErrorCode::kFormat,
         "{}: quantization_config: exactly one of load_in_4bit and load_in_8bit "
         "must be true",
         cfg_path.string());
  DequantizedModel m;
  m.config = ModelConfig::from_json(cfg, cfg_path.string());
  m.config.validate(cfg_path.string());
  const SafetensorsSet w = SafetensorsSet::open(dir);
  Reader r(w, w.origin());
  for (const WeightSpec& spec : qwen2_weight_specs(m.config)) {
    std::vector<float> v;
    const std::string qs4 = spec.name + ".quant_state.bitsandbytes__";
    const bool q4 = r.has(qs4 + "nf4") || r.has(qs4 + "fp4");
    const bool q8 = r.has(spec.name.substr(0, spec.name.size() - 7) + ".SCB");
    if (spec.kind == WeightKind::kMatrix && (q4 || q8)) {
      if ((q4 && !in4) || (q8 && !in8))
        fail(ErrorCode::kFormat, "{}: {} is {}-bit quantized, but quantization_config says {}-bit",
             r.origin(), spec.name, q4 ? 4 : 8, in4 ? 4 : 8);
      v = q4 ? load_4bit(r, spec, qs4 + (r.has(qs4 + "nf4") ? "nf4" : "fp4")) : load_int8(r, spec);
    } else {
      // Kept in a float dtype (embeddings, lm_head, norms, biases, llm_int8_skip_modules).
      const TensorView* t = w.find(spec.name);
      if (!t) fail(ErrorCode::kFormat, "{}: missing tensor {}", r.origin(), spec.name);
      if (!dtype_is_float(t->dtype))
        fail(ErrorCode::kFormat, "{}: {}: dtype {} without quantization state", r.origin(),
             spec.name, dtype_name(t->dtype));
      r.get(spec.name, t->dtype, &spec.shape);
      v = to_f32(t->dtype, t->data);
    }
    m.weights[spec.name] = std::move(v);
  }
  for (const TensorView* t : w.tensors()) {
    // A tied model may keep a stored lm_head (transformers ignores it).
    if (t->name == "lm_head.weight" && m.config.tie_word_embeddings) continue;
    if (!r.used().contains(t->name))
      fail(ErrorCode::kFormat, "{}: unexpected tensor {}", r.origin(), t->name);
  }
  return m;
}

}  // namespace nnpipe
