// Qwen2 HF directory -> GGUF model. Mirrors convert_hf_to_gguf.py (Qwen2Model, _set_vocab_gpt2,
// SpecialVocab) so that llama.cpp reads the result like its own conversion, and llama-quantize
// (quant_mix.h for the per-tensor types, src/quant for the blocks) for the tensor data.
#include "export/gguf_export.h"

#include <filesystem>
#include <map>

#include "arch/qwen2_arch.h"
#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/json.h"
#include "io/hf_model_dir.h"
#include "quant/ggml_quants.h"
#include "tensor/convert.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {
namespace {

struct ExportType {
  const char* name;
  QuantMix mix;
};

using F = LlamaFtype;
constexpr ExportType kExportTypes[] = {
    {"f32", {F::kAllF32}},
    {"f16", {F::kMostlyF16}},
    {"bf16", {F::kMostlyBF16}},
    {"q8_0", {F::kMostlyQ8_0}},
    {"q4_0", {F::kMostlyQ4_0}},
    {"q4_1", {F::kMostlyQ4_1}},
    {"q5_0", {F::kMostlyQ5_0}},
    {"q5_1", {F::kMostlyQ5_1}},
    {"q4_k", {F::kMostlyQ4_K_S, true}},
    {"q5_k", {F::kMostlyQ5_K_S, true}},
    {"q6_k", {F::kMostlyQ6_K}},
    {"q4_k_s", {F::kMostlyQ4_K_S}},
    {"q4_k_m", {F::kMostlyQ4_K_M}},
    {"q5_k_s", {F::kMostlyQ5_K_S}},
    {"q5_k_m", {F::kMostlyQ5_K_M}},
};

// HF name -> GGUF name per FORMATS.md (the table in arch/qwen2_arch.h); throws for a name
// outside it.
std::string gguf_tensor_name(const std::string& hf) {
  const size_t last = hf.rfind('.');
  if (last != std::string::npos) {
    const std::string suffix = hf.substr(last);
    if (auto g = qwen2::gguf_module_of_hf(std::string_view(hf).substr(0, last), false);
        g && suffix == ".weight")  // the root modules have weights only
      return std::string(*g) + suffix;
    const std::string prefix = qwen2::kHfLayerPrefix;
    if (hf.starts_with(prefix)) {
      const size_t dot = hf.find('.', prefix.size());
      if (dot != std::string::npos && last > dot) {
        const std::string n = hf.substr(prefix.size(), dot - prefix.size());
        const std::string mid = hf.substr(dot + 1, last - dot - 1);
        if (auto g = qwen2::gguf_module_of_hf(mid, true))
          return fmt::format("{}{}.{}{}", qwen2::kGgufLayerPrefix, n, *g, suffix);
      }
    }
  }
  fail(ErrorCode::kInternal, "GGUF export: no GGUF name for tensor {}", hf);
}

// gguf-py's SpecialVocab looks a token up by its content in tokenizer_config first ("<|im_end|>"
// or {"content": ...}), then falls back to config.json's *_token_id; ids outside the
// vocabulary are dropped, as SpecialVocab does with n_vocab.
std::optional<uint32_t> special_id(const json& tok_config, const std::string& key,
                                   const std::map<std::string, int64_t>& ids,
                                   std::optional<int64_t> fallback, int64_t vocab_size) {
  if (tok_config.is_object()) {
    if (auto it = tok_config.find(key + "_token"); it != tok_config.end()) {
      std::string content;
      if (it->is_string()) content = it->get<std::string>();
      if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        content = (*it)["content"].get<std::string>();
      if (auto f = ids.find(content); !content.empty() && f != ids.end())
        return static_cast<uint32_t>(f->second);
    }
  }
  if (fallback && *fallback >= 0 && *fallback < vocab_size) return static_cast<uint32_t>(*fallback);
  return std::nullopt;
}

// convert_hf_to_gguf.py's does_token_look_special, for the patterns Qwen tokenizers use.
bool looks_special(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  return t.starts_with("<|") && t.ends_with("|>");
}

// The GGUF says "gpt2" (byte-level BPE): a tokenizer our own loader refuses (Unigram/WordPiece,
// duplicate ids, a bad pre-tokenizer regex, ...) or one without the 256 byte tokens (an empty
// vocabulary) must not become a file that runs with the wrong tokenizer, drops text or fails at
// load. Checked before anything is written.
void validate_tokenizer(const fs::path& path) {
  const Tokenizer tok = Tokenizer::from_file(path);
  for (int b = 0; b < 256; ++b)
    if (!tok.token_to_id(byte_level::byte_to_str(static_cast<uint8_t>(b))))
      fail(ErrorCode::kFormat,
           "{}: model.vocab has no token for byte 0x{:02X} ({}): not a complete byte-level BPE "
           "(text with that byte could not be encoded); not exported",
           path.string(), b, json(byte_level::byte_to_str(static_cast<uint8_t>(b))).dump());
}

void add_tokenizer(GgufWriter& w, const HfModelDir& m) {
  const fs::path path = m.tokenizer_json_path();
  const json tj = read_json_file(path);
  const auto origin = path.string();
  const json& model = require_field(tj, "model", origin);
  const json& vocab = require_field(model, "vocab", origin);
  if (!vocab.is_object()) fail(ErrorCode::kFormat, "{}: model.vocab is not an object", origin);

  std::map<int64_t, std::string> by_id;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    by_id[it.value().get<int64_t>()] = it.key();
  std::map<std::string, int64_t> added_ids;  // SpecialVocab resolves special tokens among these
  std::map<int64_t, int32_t> added_type;
  if (auto at = tj.find("added_tokens"); at != tj.end() && at->is_array())
    for (const json& t : *at) {
      int64_t id = require_field(t, "id", origin).get<int64_t>();
      std::string content = require_field(t, "content", origin).get<std::string>();
      bool special = t.value("special", false);
      added_ids[content] = id;
      by_id[id] = content;
      added_type[id] = special || looks_special(content) ? 3 /*CONTROL*/ : 4 /*USER_DEFINED*/;
    }

  const int64_t vocab_size = m.config().vocab_size;
  if (!by_id.empty() && (by_id.begin()->first < 0 || by_id.rbegin()->first >= vocab_size))
    fail(ErrorCode::kFormat, "{}: token id {} is outside config.json vocab_size {}", origin,
         by_id.begin()->first < 0 ? by_id.begin()->first : by_id.rbegin()->first, vocab_size);

  GgufArray tokens{GgufType::kString, {}}, types{GgufType::kI32, {}};
  tokens.items.reserve(vocab_size);
  types.items.reserve(vocab_size);
  for (int64_t i = 0; i < vocab_size; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {  // llama.cpp needs one entry per embedding row
      tokens.items.emplace_back(fmt::format("[PAD{}]", i));
      types.items.emplace_back(int32_t{5});  // UNUSED, as convert_hf_to_gguf.py
      continue;
    }
    tokens.items.emplace_back(it->second);
    auto a = added_type.find(i);
    types.items.emplace_back(a == added_type.end() ? int32_t{1} : a->second);
  }

  GgufArray merges{GgufType::kString, {}};
  if (auto mj = model.find("merges"); mj != model.end())
    for (const json& e : *mj) {
      if (e.is_string()) {
        merges.items.emplace_back(e.get<std::string>());
      } else if (e.is_array() && e.size() == 2) {  // newer tokenizers store [a, b] pairs
        // gguf-py encodes a space inside a part as U+0120, since " " separates the two parts.
        auto part = [](std::string p) {
          for (size_t i = p.find(' '); i != std::string::npos; i = p.find(' ', i + 2))
            p.replace(i, 1, "\xC4\xA0");
          return p;
        };
        merges.items.emplace_back(part(e[0].get<std::string>()) + " " +
                                  part(e[1].get<std::string>()));
      } else {
        fail(ErrorCode::kFormat, "{}: a merge is neither \"a b\" nor [a, b]", origin);
      }
    }

  w.add("tokenizer.ggml.model", "gpt2");
  w.add("tokenizer.ggml.pre", "qwen2");
  w.add("tokenizer.ggml.tokens", std::move(tokens));
  w.add("tokenizer.ggml.token_type", std::move(types));
  w.add("tokenizer.ggml.merges", std::move(merges));

  // config.json's plain integer ids are the fallback (ModelConfig has no pad id, so read it raw).
  const json cfg = read_json_file(m.dir() / "config.json");
  auto cfg_id = [&](const std::string& key) -> std::optional<int64_t> {
    auto it = cfg.find(key);
    if (it == cfg.end() || !it->is_number_integer()) return std::nullopt;
    return it->get<int64_t>();
  };
  const json& tc = m.tokenizer_config();
  const char* kSpecial[][2] = {{"bos", "tokenizer.ggml.bos_token_id"},
                               {"eos", "tokenizer.ggml.eos_token_id"},
                               {"pad", "tokenizer.ggml.padding_token_id"}};
  for (const auto& [name, key] : kSpecial)
    if (auto id =
            special_id(tc, name, added_ids, cfg_id(std::string(name) + "_token_id"), vocab_size))
      w.add(key, *id);
  // Qwen never prepends BOS; llama.cpp would otherwise default to adding one for gpt2 vocabs.
  w.add("tokenizer.ggml.add_bos_token", false);
  if (m.chat_template()) w.add("tokenizer.chat_template", *m.chat_template());
}

}  // namespace

std::optional<QuantMix> gguf_export_type_from_name(std::string_view name) {
  for (const auto& e : kExportTypes)
    if (name == e.name) return e.mix;
  return std::nullopt;
}

std::string gguf_export_type_names() {
  std::string s;
  for (const auto& e : kExportTypes) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}

std::optional<QuantMix> quant_mix_for_type(GgmlType t) {
  for (const auto& e : kExportTypes)
    if (llama_ftype_default_type(e.mix.ftype) == t) return e.mix;  // the first: q4_k, q5_k pure
  return std::nullopt;
}

GgufExportSummary export_model_gguf(const fs::path& model_dir, const QuantMix& mix,
                                    const fs::path& out) {
  const HfModelDir m = HfModelDir::open(model_dir);
  const ModelConfig& c = m.config();
  validate_tokenizer(m.tokenizer_json_path());

  GgufWriter w;
  w.add("general.architecture", "qwen2");  // first, as gguf-py's GGUFWriter
  w.add("general.type", "model");
  std::string name = fs::absolute(model_dir).lexically_normal().filename().string();
  if (name.empty())
    name = fs::absolute(model_dir).lexically_normal().parent_path().filename().string();
  w.add("general.name", name);
  w.add("general.file_type", static_cast<uint32_t>(mix.ftype));
  w.add("general.quantization_version", uint32_t{2});
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  w.add("qwen2.context_length", u32(c.max_position_embeddings));
  w.add("qwen2.embedding_length", u32(c.hidden_size));
  w.add("qwen2.block_count", u32(c.num_hidden_layers));
  w.add("qwen2.feed_forward_length", u32(c.intermediate_size));
  w.add("qwen2.attention.head_count", u32(c.num_attention_heads));
  w.add("qwen2.attention.head_count_kv", u32(c.num_key_value_heads));
  w.add("qwen2.rope.freq_base", static_cast<float>(c.rope_theta));
  w.add("qwen2.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  try {
    add_tokenizer(w, m);
  } catch (const json::exception& e) {  // a tokenizer.json field of the wrong JSON type
    fail(ErrorCode::kFormat, "{}: {}", m.tokenizer_json_path().string(), e.what());
  }

  // qwen2_weight_specs omits lm_head for tied models, so a tied export has no `output` tensor.
  const auto specs = qwen2_weight_specs(c);
  std::vector<std::string> names;
  for (const WeightSpec& s : specs) names.push_back(gguf_tensor_name(s.name));
  QuantMixModel mm = QuantMixModel::from_tensor_names(names, static_cast<int>(c.num_hidden_layers));
  mm.type_70b = c.num_hidden_layers == 80;  // llama.cpp's Qwen2 size classes: 80 blocks = 70B

  GgufExportSummary summary;
  std::vector<std::vector<uint8_t>> buffers;  // alive until write()
  buffers.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const WeightSpec& s = specs[i];
    const TensorView& t = m.tensor(s.name);
    std::vector<float> x = to_f32(t.dtype, t.data);
    std::vector<int64_t> ne(s.shape.rbegin(), s.shape.rend());
    const GgmlType tt = quant_mix_tensor_type(mix, mm, names[i], ne);
    const std::optional<DType> dt = dtype_of_ggml(tt);
    if (!dt)
      fail(ErrorCode::kUnsupported, "{}: quantization to {} is not implemented", names[i],
           ggml_traits(tt).name);
    buffers.push_back(quantize_rows(*dt, x, ne[0]));
    w.add_tensor(names[i], tt, std::move(ne), buffers.back());
    ++summary.type_counts[ggml_traits(tt).name];
  }
  w.write(out);
  summary.tensors = specs.size();
  summary.bytes = static_cast<uint64_t>(fs::file_size(out));
  return summary;
}

}  // namespace nnpipe
