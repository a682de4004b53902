#include "model/gguf_model.h"

#include <cstring>
#include <fstream>
#include <map>

#include "arch/qwen2_arch.h"
#include "arch/qwen2_weights.h"
#include "backend/backend.h"
#include "core/error.h"
#include "core/log.h"
#include "core/utf8.h"
#include "quant/ggml_quants.h"

namespace nnpipe {
namespace {

void check_utf8_strings(const GgufFile& f, const char* key,
                        const std::vector<std::string_view>& items) {
  for (size_t i = 0; i < items.size(); ++i)
    if (size_t at = utf8::find_invalid(items[i]); at != std::string_view::npos)
      fail(ErrorCode::kFormat, "{}: {}[{}]: invalid UTF-8 (byte 0x{:02X} at position {})",
           f.origin(), key, i, static_cast<unsigned char>(items[i][at]), at);
}

}  // namespace

std::optional<std::string> qwen2_hf_name_from_gguf(std::string_view g) {
  // "<module>.<suffix>" at the root or "blk.N.<module>.<suffix>" -> the HF name.
  const size_t last = g.rfind('.');
  if (last == std::string_view::npos) return std::nullopt;
  const std::string_view suffix = g.substr(last);
  const std::string_view kBlk = qwen2::kGgufLayerPrefix;
  if (!g.starts_with(kBlk)) {
    if (suffix != ".weight") return std::nullopt;  // the root modules have weights only
    const auto hf = qwen2::hf_module_of_gguf(g.substr(0, last), false);
    if (!hf) return std::nullopt;
    return std::string(*hf) + std::string(suffix);
  }
  const size_t dot = g.find('.', kBlk.size());
  if (dot == std::string_view::npos || last <= dot) return std::nullopt;
  const std::string_view n = g.substr(kBlk.size(), dot - kBlk.size());
  if (n.empty() || n.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
  const auto hf = qwen2::hf_module_of_gguf(g.substr(dot + 1, last - dot - 1), true);
  if (!hf) return std::nullopt;
  return qwen2::kHfLayerPrefix + std::string(n) + "." + std::string(*hf) + std::string(suffix);
}

ModelConfig qwen2_config_from_gguf(const GgufFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  if (arch != "qwen2")
    fail(ErrorCode::kUnsupported, "{}: general.architecture is \"{}\", nnpipe runs \"qwen2\"",
         f.origin(), arch);
  ModelConfig c;
  c.hidden_size = f.get_u32("qwen2.embedding_length");
  c.intermediate_size = f.get_u32("qwen2.feed_forward_length");
  c.num_hidden_layers = f.get_u32("qwen2.block_count");
  {
    // The header's block count against the blocks the file holds, before the engine or the
    // weight specs are sized by it (2^32-1 blocks must not allocate).
    std::vector<std::string_view> names;
    names.reserve(f.tensors().size());
    for (const GgufTensor& t : f.tensors()) names.push_back(t.name);
    check_layers_present(c.num_hidden_layers, layer_indices(names, "blk."), f.origin(),
                         "qwen2.block_count", "blk.");
  }
  c.num_attention_heads = f.get_u32("qwen2.attention.head_count");
  c.num_key_value_heads = f.find_value("qwen2.attention.head_count_kv")
                              ? f.get_u32("qwen2.attention.head_count_kv")
                              : c.num_attention_heads;
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  if (f.find_value("qwen2.attention.key_length")) {
    c.head_dim = f.get_u32("qwen2.attention.key_length");
    c.head_dim_given = true;
  }
  c.max_position_embeddings = f.get_u32("qwen2.context_length");
  if (f.find_value("qwen2.rope.freq_base")) c.rope_theta = f.get_f32("qwen2.rope.freq_base");
  c.rms_norm_eps = f.get_f32("qwen2.attention.layer_norm_rms_epsilon");
  const GgufTensor& embd = f.get("token_embd.weight");
  if (embd.ne.size() != 2)
    fail(ErrorCode::kFormat, "{}: token_embd.weight has {} dims, expected 2", f.origin(),
         embd.ne.size());
  c.vocab_size = embd.ne[1];
  c.tie_word_embeddings = f.find("output.weight") == nullptr;
  // Like llama.cpp, a special token id outside the vocabulary is reported and ignored.
  auto special = [&](const char* key) -> std::optional<int64_t> {
    if (!f.find_value(key)) return std::nullopt;
    const uint32_t id = f.get_u32(key);
    if (id < c.vocab_size) return id;
    log::warn("{}: {} = {} is outside the vocabulary (0..{}): ignored", f.origin(), key, id,
              c.vocab_size - 1);
    return std::nullopt;
  };
  c.bos_token_id = special("tokenizer.ggml.bos_token_id");
  if (auto eos = special("tokenizer.ggml.eos_token_id")) c.eos_token_id = {*eos};
  c.validate(f.origin());
  return c;
}

json tokenizer_json_from_gguf(const GgufFile& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    fail(ErrorCode::kUnsupported, "{}: tokenizer.ggml.model is \"{}\"; nnpipe reads \"gpt2\" (BPE)",
         f.origin(), model);
  const std::vector<std::string_view> tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (tokens.empty()) fail(ErrorCode::kFormat, "{}: tokenizer.ggml.tokens is empty", f.origin());
  // Byte-level BPE tokens and merges are UTF-8 text (bytes mapped to code points): anything else
  // is a corrupt file, and JSON could not hold it.
  check_utf8_strings(f, "tokenizer.ggml.tokens", tokens);
  const GgufArray& types = f.get_array("tokenizer.ggml.token_type");
  if (types.type != GgufType::kI32 || types.items.size() != tokens.size())
    fail(ErrorCode::kFormat,
         "{}: tokenizer.ggml.token_type must be {} INT32 values (one per token)", f.origin(),
         tokens.size());
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    const int32_t type = *types.items[id].get_if<int32_t>();
    if (type == 5) continue;  // UNUSED: [PAD i] rows of a vocabulary padded to the embedding
    const std::string content(tokens[id]);
    if (type == 3 || type == 4)
      added.push_back({{"id", id},
                       {"content", content},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", type == 4},
                       {"special", type == 3}});
    else
      vocab[content] = id;
  }
  json merges = json::array();
  if (f.find_value("tokenizer.ggml.merges")) {
    const std::vector<std::string_view> merge_list = f.get_string_array("tokenizer.ggml.merges");
    check_utf8_strings(f, "tokenizer.ggml.merges", merge_list);
    for (std::string_view m : merge_list) {
      const size_t sp = m.find(' ');
      if (sp == std::string_view::npos)
        fail(ErrorCode::kFormat, "{}: tokenizer.ggml.merges entry \"{}\" has no space", f.origin(),
             m);
      merges.push_back(json::array({std::string(m.substr(0, sp)), std::string(m.substr(sp + 1))}));
    }
  }
  return qwen_bpe_tokenizer_json(std::move(vocab), std::move(merges), std::move(added));
}

ChatAssets chat_assets_from_gguf(const GgufFile& f) {
  ChatAssets a{Tokenizer::from_json(tokenizer_json_from_gguf(f), f.origin())};
  const std::vector<std::string_view> tokens = f.get_string_array("tokenizer.ggml.tokens");
  for (auto [key, var] : {std::pair{"tokenizer.ggml.bos_token_id", "bos_token"},
                          std::pair{"tokenizer.ggml.eos_token_id", "eos_token"},
                          std::pair{"tokenizer.ggml.padding_token_id", "pad_token"}})
    if (f.find_value(key))
      if (uint32_t id = f.get_u32(key); id < tokens.size())
        a.template_vars[var] = std::string(tokens[id]);
  if (f.find_value("tokenizer.chat_template")) {
    a.chat_template.emplace(f.get_string("tokenizer.chat_template"),
                            f.origin() + ":tokenizer.chat_template");
  } else {
    a.chat_template.emplace(chatml_template_source(), "chatml-fallback");
    a.template_is_fallback = true;
  }
  return a;
}

Qwen2Model load_qwen2_gguf(const GgufFile& f) {
  ModelConfig c = qwen2_config_from_gguf(f);
  std::map<std::string, std::vector<int64_t>> stored;
  std::map<std::string, const GgufTensor*> by_hf;
  for (const GgufTensor& t : f.tensors()) {
    auto hf = qwen2_hf_name_from_gguf(t.name);
    if (!hf)
      fail(ErrorCode::kFormat, "{}: tensor {} is not part of a Qwen2 model", f.origin(), t.name);
    stored[*hf] = std::vector<int64_t>(t.ne.rbegin(), t.ne.rend());  // GGML order -> PyTorch
    by_hf[*hf] = &t;
  }
  check_qwen2_weights(c, stored, f.origin());
  Qwen2Params p;
  for (const WeightSpec& s : qwen2_weight_specs(c)) {
    const GgufTensor& t = *by_hf.at(s.name);
    const std::optional<DType> dt = dtype_of_ggml(t.type);
    if (!dt || !ggml_can_dequantize(*dt))
      fail(ErrorCode::kUnsupported, "{}: tensor {} has type {}, which nnpipe cannot dequantize",
           f.origin(), t.name, ggml_traits(t.type).name);
    Tensor out = Tensor::zeros(DType::kF32, s.shape);
    // (numel) floats; the data span is validated against ggml_nbytes by GgufFile.
    dequantize_rows(*dt, t.data,
                    std::span<float>(reinterpret_cast<float*>(out.raw()), out.numel()));
    p.by_name.emplace(s.name, std::move(out));
  }
  return Qwen2Model(std::move(c), std::move(p), cpu_backend());
}

bool is_gguf_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace nnpipe
