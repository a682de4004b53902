#include "export/hf_quantize.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/file.h"
#include "core/log.h"
#include "io/hf_model_dir.h"
#include "tensor/convert.h"

namespace nnpipe {

namespace {

// Files of a model directory that the quantized copy keeps unchanged.
constexpr const char* kCopiedFiles[] = {"generation_config.json",
                                        "tokenizer.json",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json",
                                        "chat_template.jinja",
                                        "vocab.json",
                                        "merges.txt",
                                        "added_tokens.json"};

const char* short_dtype_name(DType t) {
  return t == DType::kBF16 ? "bf16" : t == DType::kF16 ? "f16" : "f32";
}

// One output tensor with its own storage.
struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
std::vector<uint8_t> to_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A string as a 1-D uint8 tensor (bitsandbytes' pack_dict_to_tensor).
OutTensor text_tensor(std::string name, const std::string& text) {
  return {
      std::move(name), DType::kU8, {static_cast<int64_t>(text.size())}, {text.begin(), text.end()}};
}

// Error statistics of `approx` against `ref`, accumulated in double.
struct ErrAcc {
  double max_abs = 0, sq = 0, ref_sq = 0;
  uint64_t n = 0;
  void add(std::span<const float> ref, std::span<const float> approx) {
    for (size_t i = 0; i < ref.size(); ++i) {
      const double d = static_cast<double>(approx[i]) - ref[i];
      max_abs = std::max(max_abs, std::fabs(d));
      sq += d * d;
      ref_sq += static_cast<double>(ref[i]) * ref[i];
    }
    n += ref.size();
  }
  void add(const ErrAcc& o) {
    max_abs = std::max(max_abs, o.max_abs);
    sq += o.sq;
    ref_sq += o.ref_sq;
    n += o.n;
  }
  double rmse() const { return n ? std::sqrt(sq / static_cast<double>(n)) : 0; }
  double rel() const { return ref_sq > 0 ? std::sqrt(sq / ref_sq) : 0; }
};

// Values rounded to `t` and back (what the tensor holds once from_pretrained cast it).
std::vector<float> round_to(std::span<const float> x, DType t) {
  if (t == DType::kF32) return {x.begin(), x.end()};
  return to_f32(t, from_f32(x, t));
}

// quant_state.bitsandbytes__<type>: json.dumps of QuantState.as_dict's non-tensor items.
std::string quant_state_json(Bnb4bitType type, int64_t blocksize, DType dtype,
                             const std::vector<int64_t>& shape, const BnbNested* nested) {
  std::string shp;
  for (size_t i = 0; i < shape.size(); ++i) shp += fmt::format("{}{}", i ? ", " : "", shape[i]);
  std::string s =
      fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}])",
                  bnb4bit_type_name(type), blocksize, dtype_torch_name(dtype), shp);
  if (nested)
    s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                     kBnbNestedBlocksize, python_float_repr(nested->offset));
  return s + "}";
}

}  // namespace

Bnb4bitType bnb4bit_type_from_name(const std::string& name) {
  if (name == "nf4") return Bnb4bitType::kNF4;
  if (name == "fp4") return Bnb4bitType::kFP4;
  fail(ErrorCode::kInvalidArgument, "quant type \"{}\": expected nf4 or fp4", name);
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";  // json.dumps spellings
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // "-d.ddde-XX", shortest round-trip digits
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::stoi(sci.substr(e + 1));
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      if (digits.size() < static_cast<size_t>(exp) + 1)
        digits.resize(static_cast<size_t>(exp) + 1, '0');
      std::string frac = digits.substr(static_cast<size_t>(exp) + 1);
      out = digits.substr(0, static_cast<size_t>(exp) + 1) + "." + (frac.empty() ? "0" : frac);
    } else {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") +
          fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return sign + out;
}

json bnb_quantization_config(const HfQuantizeOptions& opt, DType model_dtype) {
  const bool q4 = opt.bits == 4;
  json c = json::object();
  c["_load_in_4bit"] = q4;
  c["_load_in_8bit"] = !q4;
  c["bnb_4bit_compute_dtype"] =
      std::string(dtype_torch_name(q4 ? opt.compute_dtype.value_or(model_dtype) : DType::kF32));
  c["bnb_4bit_quant_storage"] = "uint8";
  c["bnb_4bit_quant_type"] = q4 ? bnb4bit_type_name(opt.quant_type) : "fp4";
  c["bnb_4bit_use_double_quant"] = q4 && opt.double_quant;
  c["llm_int8_enable_fp32_cpu_offload"] = false;
  c["llm_int8_has_fp16_weight"] = false;
  c["llm_int8_skip_modules"] = nullptr;
  c["llm_int8_threshold"] = 6.0;
  c["load_in_4bit"] = q4;
  c["load_in_8bit"] = !q4;
  c["quant_method"] = "bitsandbytes";
  return c;
}

json QuantizeSummary::to_json() const {
  json t = json::array();
  for (const auto& s : tensors)
    t.push_back({{"name", s.name},
                 {"format", s.format},
                 {"shape", s.shape},
                 {"bytes_before", s.bytes_before},
                 {"bytes_after", s.bytes_after},
                 {"max_abs_err", s.max_abs_err},
                 {"rmse", s.rmse},
                 {"rel_rmse", s.rel_rmse}});
  return {{"bits", bits},
          {"method", method},
          {"out_dir", out_dir},
          {"files", files},
          {"quantized_tensors", quantized_tensors},
          {"bytes_before", bytes_before},
          {"bytes_after", bytes_after},
          {"compression", bytes_after ? static_cast<double>(bytes_before) / bytes_after : 0.0},
          {"max_abs_err", max_abs_err},
          {"rmse", rmse},
          {"rel_rmse", rel_rmse},
          {"quantization_config", quantization_config},
          {"tensors", std::move(t)}};
}

QuantizeSummary quantize_model(const fs::path& model_dir, const HfQuantizeOptions& opt,
                               const fs::path& out_dir) {
  if (opt.bits != 16 && opt.bits != 8 && opt.bits != 4)
    fail(ErrorCode::kInvalidArgument, "--bits {}: expected 16, 8 or 4", opt.bits);
  if (opt.bits == 16 && opt.dtype != DType::kBF16 && opt.dtype != DType::kF16)
    fail(ErrorCode::kInvalidArgument, "--dtype {}: 16-bit output is bfloat16 or float16",
         dtype_torch_name(opt.dtype));
  if (opt.bits == 4 && !bnb4bit_valid_blocksize(opt.blocksize))
    fail(ErrorCode::kInvalidArgument,
         "--blocksize {}: bitsandbytes accepts 32, 64, 128, 256, 512, 1024, 2048 or 4096",
         opt.blocksize);
  if (opt.compute_dtype && *opt.compute_dtype != DType::kF32 &&
      *opt.compute_dtype != DType::kBF16 && *opt.compute_dtype != DType::kF16)
    fail(ErrorCode::kInvalidArgument, "--compute-dtype {}: expected float32, bfloat16 or float16",
         dtype_torch_name(*opt.compute_dtype));
  if (out_dir.empty()) fail(ErrorCode::kInvalidArgument, "quantize: no output directory");

  std::error_code ec;
  const fs::path cfg_path = model_dir / "config.json";
  if (!fs::is_directory(model_dir, ec))
    fail(ErrorCode::kNotFound, "{}: not a model directory", model_dir.string());
  if (!fs::exists(cfg_path, ec))
    fail(ErrorCode::kNotFound, "{}: missing config.json", model_dir.string());
  json cfg_json = read_json_file(cfg_path);
  if (!cfg_json.is_object())
    fail(ErrorCode::kFormat, "{}: expected a JSON object", cfg_path.string());
  if (auto it = cfg_json.find("quantization_config"); it != cfg_json.end() && !it->is_null())
    fail(ErrorCode::kUnsupported,
         "{}: the model is already quantized (quantization_config with quant_method {}); "
         "quantize the original 16/32-bit model instead",
         cfg_path.string(), it->is_object() ? it->value("quant_method", std::string("?")) : "?");
  if (fs::weakly_canonical(model_dir, ec) == fs::weakly_canonical(out_dir, ec))
    fail(ErrorCode::kInvalidArgument, "quantize: --out {} is the input directory",
         out_dir.string());

  const HfModelDir m = HfModelDir::open(model_dir);  // validates config and tensors
  const ModelConfig& c = m.config();
  const DType model_dtype = c.torch_dtype;
  const DType keep_dtype = opt.bits == 16 ? opt.dtype : model_dtype;

  QuantizeSummary s;
  s.bits = opt.bits;
  s.method = opt.bits == 16 ? short_dtype_name(opt.dtype)
             : opt.bits == 8
                 ? "int8"
                 : std::string(bnb4bit_type_name(opt.quant_type)) + (opt.double_quant ? "+dq" : "");
  s.out_dir = out_dir.string();

  std::vector<OutTensor> outs;
  ErrAcc total;
  for (const WeightSpec& spec : qwen2_weight_specs(c)) {
    // A tied model: transformers neither saves nor quantizes lm_head (it is the embedding).
    if (spec.name == "lm_head.weight" && c.tie_word_embeddings) continue;
    const TensorView& view = m.tensor(spec.name);
    const std::vector<float> orig = to_f32(view.dtype, view.data);
    QuantizedTensorStats st;
    st.name = spec.name;
    st.shape = spec.shape;
    st.bytes_before = view.data.size();
    std::vector<float> approx;
    const bool quantize = opt.bits != 16 && spec.kind == WeightKind::kMatrix;
    if (!quantize) {
      st.format = std::string(dtype_torch_name(keep_dtype));
      std::vector<uint8_t> b = from_f32(orig, keep_dtype);
      approx = to_f32(keep_dtype, b);
      outs.push_back({spec.name, keep_dtype, spec.shape, std::move(b)});
      st.bytes_after = outs.back().bytes.size();
    } else {
      ++s.quantized_tensors;
      const std::vector<float> w = round_to(orig, model_dtype);  // what from_pretrained holds
      const std::string base =
          spec.name.substr(0, spec.name.size() - std::string(".weight").size());
      approx.resize(w.size());
      if (opt.bits == 8) {
        st.format = "int8";
        BnbInt8 q = bnb_quantize_int8(w, spec.shape[0], spec.shape[1]);
        bnb_dequantize_int8(q.cb, q.scb, spec.shape[1], approx);
        const size_t first = outs.size();
        outs.push_back({base + ".SCB", DType::kF32, {spec.shape[0]}, to_bytes(q.scb)});
        outs.push_back({spec.name, DType::kI8, spec.shape, to_bytes(q.cb)});
        outs.push_back({base + ".weight_format", DType::kU8, {}, {0}});
        for (size_t i = first; i < outs.size(); ++i) st.bytes_after += outs[i].bytes.size();
      } else {
        st.format = bnb4bit_type_name(opt.quant_type);
        Bnb4bit q = bnb_quantize_4bit(w, opt.blocksize, opt.quant_type);
        const size_t first = outs.size();
        const auto& code = bnb4bit_code(opt.quant_type);
        const std::string qs_name =
            spec.name + ".quant_state.bitsandbytes__" + bnb4bit_type_name(opt.quant_type);
        std::vector<float> absmax = q.absmax;
        const auto n_packed = static_cast<int64_t>(q.packed.size());
        outs.push_back({spec.name, DType::kU8, {n_packed, 1}, std::move(q.packed)});
        if (opt.double_quant) {
          BnbNested nq = bnb_quantize_nested(q.absmax);
          bnb_dequantize_nested(nq.q, nq.absmax, bnb_dynamic_map(), kBnbNestedBlocksize, nq.offset,
                                absmax);
          const auto& dm = bnb_dynamic_map();
          const auto n_abs = static_cast<int64_t>(nq.q.size());
          const auto n_nabs = static_cast<int64_t>(nq.absmax.size());
          outs.push_back({spec.name + ".absmax", DType::kU8, {n_abs}, nq.q});
          outs.push_back(
              {spec.name + ".nested_absmax", DType::kF32, {n_nabs}, to_bytes(nq.absmax)});
          outs.push_back({spec.name + ".nested_quant_map",
                          DType::kF32,
                          {256},
                          to_bytes(std::vector<float>(dm.begin(), dm.end()))});
          outs.push_back(text_tensor(qs_name, quant_state_json(opt.quant_type, opt.blocksize,
                                                               model_dtype, spec.shape, &nq)));
        } else {
          const auto n_abs = static_cast<int64_t>(q.absmax.size());
          outs.push_back({spec.name + ".absmax", DType::kF32, {n_abs}, to_bytes(q.absmax)});
          outs.push_back(text_tensor(qs_name, quant_state_json(opt.quant_type, opt.blocksize,
                                                               model_dtype, spec.shape, nullptr)));
        }
        outs.push_back({spec.name + ".quant_map",
                        DType::kF32,
                        {16},
                        to_bytes(std::vector<float>(code.begin(), code.end()))});
        bnb_dequantize_4bit(outs[first].bytes, absmax, opt.blocksize, opt.quant_type, approx);
        for (size_t i = first; i < outs.size(); ++i) st.bytes_after += outs[i].bytes.size();
      }
    }
    ErrAcc e;
    e.add(orig, approx);
    total.add(e);
    st.max_abs_err = e.max_abs;
    st.rmse = e.rmse();
    st.rel_rmse = e.rel();
    s.bytes_before += st.bytes_before;
    s.bytes_after += st.bytes_after;
    s.tensors.push_back(std::move(st));
  }
  // A tied checkpoint that also stored lm_head (some official ones do) counts as input bytes.
  if (c.tie_word_embeddings)
    if (const TensorView* t = m.weights().find("lm_head.weight")) s.bytes_before += t->data.size();
  s.max_abs_err = total.max_abs;
  s.rmse = total.rmse();
  s.rel_rmse = total.rel();

  // config.json: the input's keys, plus what from_pretrained + save_pretrained change.
  for (const char* key : {"dtype", "torch_dtype"})
    if (cfg_json.contains(key)) cfg_json[key] = std::string(dtype_torch_name(keep_dtype));
  if (!cfg_json.contains("dtype") && !cfg_json.contains("torch_dtype"))
    cfg_json["dtype"] = std::string(dtype_torch_name(keep_dtype));
  if (opt.bits != 16) {
    s.quantization_config = bnb_quantization_config(opt, model_dtype);
    cfg_json["quantization_config"] = s.quantization_config;
  }

  std::vector<TensorRef> refs;
  refs.reserve(outs.size());
  for (const OutTensor& t : outs) refs.push_back({t.name, t.dtype, t.shape, t.bytes});
  StagingDir stage(out_dir);
  write_json_file(stage.path() / "config.json", cfg_json);
  s.files = write_sharded_safetensors(stage.path(), refs, opt.max_shard_bytes);
  s.files.insert(s.files.begin(), "config.json");
  for (const char* name : kCopiedFiles) {
    const fs::path p = model_dir / name;
    if (!fs::exists(p, ec)) continue;
    write_file_atomic(stage.path() / name, read_file(p));
    s.files.push_back(name);
  }
  stage.commit();
  log::debug("quantize: {} -> {} ({}, {} tensors quantized, {} -> {} bytes)", model_dir.string(),
             out_dir.string(), s.method, s.quantized_tensors, s.bytes_before, s.bytes_after);
  return s;
}

}  // namespace nnpipe
