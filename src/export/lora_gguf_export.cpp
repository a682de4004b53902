// PEFT LoRA adapter -> GGUF LoRA adapter. Mirrors convert_lora_to_gguf.py (LoraModel over
// convert_hf_to_gguf's Qwen2Model, gguf-py's GGUFWriter and gguf.quants) so that the bytes equal
// the converter's, and checks the adapter against the base model the way llama.cpp's
// llama_adapter_lora_init would at load time, but before anything is written.
#include "export/lora_gguf_export.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

#include "arch/qwen2_arch.h"
#include "core/error.h"
#include "core/json.h"
#include "io/hf_model_dir.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "quant/ggml_quants.h"

namespace nnpipe {
namespace {

// A whole-string match of a constant pattern with PCRE2 (std::regex trips GCC 12's
// -Wmaybe-uninitialized in the ASan build). The patterns use only ASCII classes, as std::regex's
// ECMAScript grammar would.
class FullMatch {
 public:
  FullMatch(const char* pattern, bool icase) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_ANCHORED | PCRE2_ENDANCHORED | (icase ? PCRE2_CASELESS : 0u), &err,
                          &off, nullptr);
    if (!code_) fail(ErrorCode::kInternal, "bad built-in pattern {} at {}", pattern, off);
  }
  ~FullMatch() { pcre2_code_free(code_); }
  FullMatch(const FullMatch&) = delete;
  FullMatch& operator=(const FullMatch&) = delete;
  bool operator()(const std::string& s) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    const int rc =
        pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr);
    pcre2_match_data_free(md);
    return rc >= 0;
  }

 private:
  pcre2_code* code_ = nullptr;
};

struct LoraType {
  const char* name;
  GgmlType type;
};
constexpr LoraType kLoraTypes[] = {{"f32", GgmlType::kF32},
                                   {"f16", GgmlType::kF16},
                                   {"bf16", GgmlType::kBF16},
                                   {"q8_0", GgmlType::kQ8_0}};

// PEFT module -> GGUF tensor (FORMATS.md "A Qwen2 model in GGUF").
const char* gguf_module_name(const std::string& module) {
  if (auto l = qwen2::linear_from_hf(module); l && qwen2::is_block_linear(*l))
    return qwen2::linear(*l).gguf;
  fail(ErrorCode::kInternal, "LoRA GGUF export: no GGUF name for module {}", module);
}

// PeftAdapter::load only knows the seven projections, so an adapter on lm_head or embed_tokens
// would fail there as "unexpected tensor". Find those first and say why llama.cpp cannot use them.
void check_special_targets(const fs::path& adapter_dir, const HfModelDir& base_dir) {
  const char* kLmHead = qwen2::linear(qwen2::Linear::kLmHead).hf;
  const fs::path cfg_path = adapter_dir / "adapter_config.json";
  const fs::path st_path = adapter_dir / "adapter_model.safetensors";
  // A tied model's GGUF has no output.weight even when the checkpoint stores lm_head.weight.
  const bool tied = base_dir.config().tie_word_embeddings;
  auto reject = [&](const std::string& origin, const std::string& what, bool lm_head) {
    if (lm_head && tied)
      fail(ErrorCode::kFormat,
           "{}: {}: a LoRA on lm_head, but the base model {} ties lm_head to embed_tokens, so its "
           "GGUF has no output.weight for llama.cpp to apply it to",
           origin, what, base_dir.dir().string());
    fail(ErrorCode::kUnsupported,
         "{}: {}: a LoRA on {} is not supported by nnpipe (only q_proj, k_proj, v_proj, o_proj, "
         "gate_proj, up_proj, down_proj)",
         origin, what, lm_head ? "lm_head" : "embed_tokens");
  };
  if (fs::exists(st_path)) {
    const SafetensorsFile f = SafetensorsFile::open(st_path);
    for (const TensorView& t : f.tensors()) {
      if (t.name.find(std::string(kLmHead) + ".") != std::string::npos)
        reject(st_path.string(), t.name, true);
      if (t.name.find("embed_tokens.") != std::string::npos)
        reject(st_path.string(), t.name, false);
    }
  }
  if (fs::exists(cfg_path)) {
    const json j = read_json_file(cfg_path);
    if (auto it = j.find("target_modules"); j.is_object() && it != j.end() && it->is_array())
      for (const json& m : *it) {
        if (m == kLmHead) reject(cfg_path.string(), "target_modules \"lm_head\"", true);
        if (m == "embed_tokens")
          reject(cfg_path.string(), "target_modules \"embed_tokens\"", false);
      }
  }
}

// Python's str.islower() and str.title() for ASCII.
bool py_islower(const std::string& w) {
  bool cased = false;
  for (char c : w) {
    if (std::isupper(static_cast<unsigned char>(c))) return false;
    cased = cased || std::islower(static_cast<unsigned char>(c));
  }
  return cased;
}

std::string py_title(std::string w) {
  bool prev_cased = false;
  for (char& c : w) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = static_cast<char>(prev_cased ? std::tolower(u) : std::toupper(u));
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return w;
}

// Metadata.id_to_title: strip, '-' -> ' ', split on whitespace, title-case all-lowercase words
// that are not versions (v1, v1.2) and do not start with a digit.
std::string id_to_title(std::string id) {
  std::replace(id.begin(), id.end(), '-', ' ');
  static const FullMatch kVersionOrDigit(R"(v\d+(?:\.\d+)*|\d.*)", false);
  std::string out;
  size_t i = 0;
  while (i < id.size()) {
    while (i < id.size() && std::isspace(static_cast<unsigned char>(id[i]))) ++i;
    size_t j = i;
    while (j < id.size() && !std::isspace(static_cast<unsigned char>(id[j]))) ++j;
    if (j > i) {
      std::string w = id.substr(i, j - i);
      if (py_islower(w) && !kVersionOrDigit(w)) w = py_title(w);
      out += (out.empty() ? "" : " ") + w;
    }
    i = j;
  }
  return out;
}

// gguf.quants.quantize's type for one tensor: Q8_0 needs whole 32-blocks per row, else the
// converter catches the QuantError and falls back to F16.
GgmlType tensor_type(GgmlType want, int64_t ne0) {
  if (want == GgmlType::kQ8_0 && ne0 % 32 != 0) return GgmlType::kF16;
  return want;
}

}  // namespace

std::optional<GgmlType> lora_gguf_type_from_name(std::string_view name) {
  for (const auto& t : kLoraTypes)
    if (name == t.name) return t.type;
  return std::nullopt;
}

std::string lora_gguf_type_names() {
  std::string s;
  for (const auto& t : kLoraTypes) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s;
}

GgufNameMetadata gguf_name_metadata_from_dir(const fs::path& dir, int64_t total_params) {
  // pathlib's Path(dir).name: the last component, trailing slashes and "." ignored.
  fs::path p = dir;
  while (!p.empty() && (!p.has_filename() || p.filename() == ".") && p.has_parent_path() &&
         p.parent_path() != p)
    p = p.parent_path();
  const std::string id = p.filename() == "." ? "" : p.filename().string();

  GgufNameMetadata md;
  md.name = id_to_title(id);
  if (id.find(' ') != std::string::npos) return md;  // "a normal human sentence": name only
  // Metadata.get_model_id_components (no '/' can occur in a directory name).
  enum Kind { kBasename = 1, kSizeLabel = 2, kFinetune = 4, kVersion = 8, kType = 16 };
  std::vector<std::string> parts;
  for (size_t i = 0, j; i <= id.size(); i = j + 1) {
    j = id.find('-', i);
    if (j == std::string::npos) j = id.size();
    if (j > i) parts.push_back(id.substr(i, j - i));
  }
  std::vector<int> kinds(parts.size(), 0);
  static const FullMatch kVersionRe(R"((v|iter)?\d+([.]\d+)*)", true);
  static const FullMatch kQuant(R"(i?q\d(_\w)*|b?fp?(16|32))", true);
  static const FullMatch kSize(
      R"((([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl))", true);
  static const FullMatch kFinetuneWord(R"(chat|instruct|vision|lora)", true);
  static const FullMatch kFloat(R"(\d+(\.\d+)?)", false);
  auto isdigit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string& part = parts[i];
    if (kVersionRe(part)) {
      kinds[i] |= kVersion;
    } else if (kQuant(part)) {
      kinds[i] |= kType;
      for (char& c : part) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (i > 0 && kSize(part)) {
      std::replace(part.begin(), part.end(), '_', '.');
      if (isdigit(part.back()))  // bloom-7b1 -> 7.1b
        part = part.substr(0, part.size() - 2) + "." + part.back() + part[part.size() - 2];
      if (part.size() > 1 && isdigit(part[part.size() - 2]) &&
          std::string_view("kmbt").find(part.back()) != std::string_view::npos)
        part.back() = static_cast<char>(std::toupper(static_cast<unsigned char>(part.back())));
      const std::string num = part.substr(0, part.size() - 1);
      if (total_params != 0 && kFloat(num)) {  // else Python's float() fails
        const auto unit = std::string_view(" KMBT").find(part.back());
        const double label =
            std::stod(num) * std::pow(1000.0, unit == std::string_view::npos ? -1.0 : unit);
        const double total = static_cast<double>(total_params);
        const bool context_length =
            (total_params < 0 && label < static_cast<double>(-total_params / 8)) ||
            (total_params > 0 &&
             std::fabs(label - total) > static_cast<double>(7 * total_params / 8));
        if (context_length) {
          kinds[i] |= kFinetune;
          part.back() = static_cast<char>(std::tolower(static_cast<unsigned char>(part.back())));
        }
      }
      if (kinds[i] == 0) kinds[i] |= kSizeLabel;
    } else if (i > 0 && kFinetuneWord(part)) {
      std::string lower = part;
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      kinds[i] |= total_params < 0 && lower == "lora" ? kType : kFinetune;
    }
  }
  // Word-based size labels are dropped when a number-based one is present.
  bool numeric_size = false;
  for (size_t i = 0; i < parts.size(); ++i)
    if (kinds[i] & kSizeLabel)
      numeric_size |= std::any_of(parts[i].begin(), parts[i].end(), isdigit);
  if (numeric_size)
    for (size_t i = 0; i < parts.size(); ++i)
      if ((kinds[i] & kSizeLabel) && std::all_of(parts[i].begin(), parts[i].end(), [](char c) {
            return std::isalpha(static_cast<unsigned char>(c)) != 0;
          }))
        kinds[i] &= ~kSizeLabel;
  bool at_start = true;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (at_start && ((kinds[i] == 0 && std::isalpha(static_cast<unsigned char>(parts[i][0]))) ||
                     (kinds[i] & kVersion))) {
      kinds[i] |= kBasename;
    } else {
      at_start = false;
      if (kinds[i] == 0) kinds[i] |= kFinetune;
    }
  }
  for (size_t i = parts.size(); i-- > 0;) {  // a trailing version is not part of the basename
    if ((kinds[i] & kBasename) && kinds[i] != kBasename)
      kinds[i] &= ~kBasename;
    else
      break;
  }
  auto join = [&](int kind, int without, bool dedupe) -> std::optional<std::string> {
    std::vector<std::string> sel;
    for (size_t i = 0; i < parts.size(); ++i)
      if ((kinds[i] & kind) && !(kinds[i] & without) &&
          (!dedupe || std::find(sel.begin(), sel.end(), parts[i]) == sel.end()))
        sel.push_back(parts[i]);
    if (sel.empty()) return std::nullopt;
    std::string s;
    for (const auto& x : sel) s += (s.empty() ? "" : "-") + x;
    return s;
  };
  md.basename = join(kBasename, 0, false);
  md.size_label = join(kSizeLabel, 0, true);
  md.finetune = join(kFinetune, 0, false);
  md.version = join(kVersion, kBasename, false);
  if (!md.size_label && !md.finetune && !md.version) md.basename.reset();  // too ambiguous
  return md;
}

LoraGgufExportSummary export_lora_gguf(const fs::path& adapter_dir, const fs::path& base_model_dir,
                                       GgmlType type, const fs::path& out) {
  if (std::none_of(std::begin(kLoraTypes), std::end(kLoraTypes),
                   [&](const LoraType& t) { return t.type == type; }))
    fail(ErrorCode::kInvalidArgument, "LoRA GGUF export: type {} is not one of {}",
         ggml_traits(type).name, lora_gguf_type_names());
  const HfModelDir base = HfModelDir::open(base_model_dir);
  const ModelConfig& c = base.config();
  check_special_targets(adapter_dir, base);
  const PeftAdapter a = PeftAdapter::load(adapter_dir);
  const std::string origin = (adapter_dir / "adapter_model.safetensors").string();
  a.validate(c, origin);

  // llama.cpp scales by alpha / rank; rsLoRA's PEFT scale is lora_alpha / sqrt(r).
  const double r = static_cast<double>(a.config.r);
  const double alpha =
      a.config.use_rslora ? a.config.lora_alpha * std::sqrt(r) : a.config.lora_alpha;
  // The file stores f32: a value that is not a finite f32 would load as inf/NaN in llama.cpp and
  // in our engine (NaN logits), so nothing is written.
  if (!std::isfinite(static_cast<float>(alpha)) || std::fabs(alpha) > kMaxPeftLoraAlpha)
    fail(ErrorCode::kFormat,
         "{}: lora_alpha {} (adapter.lora.alpha {}) is not a finite number in [-{}, {}]: not "
         "exported",
         (adapter_dir / "adapter_config.json").string(), a.config.lora_alpha, alpha,
         kMaxPeftLoraAlpha, kMaxPeftLoraAlpha);

  GgufWriter w;
  w.add("general.architecture", "qwen2");  // first, as gguf-py's GGUFWriter
  w.add("general.type", "adapter");
  w.add("adapter.type", "lora");
  // gguf-py's parameter count of the file: minus the out * in of each adapted layer.
  int64_t total_params = 0;
  for (const auto& m : a.modules) total_params -= m.in * m.out;
  const GgufNameMetadata md = gguf_name_metadata_from_dir(adapter_dir, total_params);
  w.add("general.name", md.name);  // Metadata.set_gguf_meta_model's order
  if (md.version) w.add("general.version", *md.version);
  if (md.finetune) w.add("general.finetune", *md.finetune);
  if (md.basename) w.add("general.basename", *md.basename);
  if (md.size_label) w.add("general.size_label", *md.size_label);
  w.add("adapter.lora.alpha", static_cast<float>(alpha));
  w.add("general.quantization_version", uint32_t{2});

  // The converter walks safetensors' load_file dict, whose keys are sorted as strings
  // ("layers.10" before "layers.2", "mlp" before "self_attn"), one lora_a/lora_b pair per module.
  std::vector<const LoraModule*> order;
  for (const auto& m : a.modules) order.push_back(&m);
  std::vector<std::string> keys;
  for (const auto* m : order) keys.push_back(lora_tensor_name(m->layer, m->module, 'A'));
  std::vector<size_t> idx(order.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return keys[x] < keys[y]; });

  LoraGgufExportSummary summary;
  std::vector<std::vector<uint8_t>> buffers;  // alive until write()
  buffers.reserve(order.size() * 2);
  for (size_t i : idx) {
    const LoraModule& m = *order[i];
    const std::string base_name =
        fmt::format("blk.{}.{}.weight", m.layer, gguf_module_name(m.module));
    // A [r, in] -> ne [in, r]; B [out, r] -> ne [r, out]: row-major bytes unchanged.
    const struct {
      const char* suffix;
      const std::vector<float>& x;
      std::vector<int64_t> ne;
    } parts[] = {{".lora_a", m.A, {m.in, a.config.r}}, {".lora_b", m.B, {a.config.r, m.out}}};
    for (const auto& p : parts) {
      const GgmlType tt = tensor_type(type, p.ne[0]);
      const std::optional<DType> dt = dtype_of_ggml(tt);
      if (!dt)
        fail(ErrorCode::kUnsupported, "{}: quantization to {} is not implemented", base_name,
             ggml_traits(tt).name);
      buffers.push_back(quantize_rows(*dt, p.x, p.ne[0]));
      w.add_tensor(base_name + p.suffix, tt, p.ne, buffers.back());
      ++summary.type_counts[ggml_traits(tt).name];
    }
  }
  w.write(out);
  summary.tensors = idx.size() * 2;
  summary.bytes = static_cast<uint64_t>(fs::file_size(out));
  summary.rank = a.config.r;
  summary.alpha = static_cast<float>(alpha);
  return summary;
}

}  // namespace nnpipe
