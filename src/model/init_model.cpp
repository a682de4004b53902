#include "model/init_model.h"

#include "arch/qwen2_weights.h"
#include "core/embedded.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/hf_model_dir.h"
#include "tensor/convert.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

TokenizerFacts tokenizer_facts(const json& tok, const std::string& origin) {
  TokenizerFacts f;
  const json& model = require_field(tok, "model", origin);
  const json& vocab = require_field(model, "vocab", origin + ": model");
  if (!vocab.is_object())
    fail(ErrorCode::kFormat, "{}: model.vocab must be an object, got {}", origin,
         json_type_name(vocab));
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      fail(ErrorCode::kFormat, "{}: model.vocab: \"{}\" must map to a non-negative integer", origin,
           token);
    f.size = std::max(f.size, id.get<int64_t>() + 1);
  }
  if (auto it = tok.find("added_tokens"); it != tok.end() && it->is_array()) {
    for (const json& a : *it) {
      const json& id = require_field(a, "id", origin + ": added_tokens");
      const json& content = require_field(a, "content", origin + ": added_tokens");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || !content.is_string())
        fail(ErrorCode::kFormat, "{}: added_tokens: bad entry {}", origin, a.dump());
      int64_t v = id.get<int64_t>();
      f.size = std::max(f.size, v + 1);
      const std::string& c = content.get_ref<const std::string&>();
      if (c == "<|endoftext|>") f.endoftext = v;
      if (c == "<|im_start|>") f.im_start = v;
      if (c == "<|im_end|>") f.im_end = v;
    }
  }
  return f;
}

json qwen_generation_config(int64_t endoftext, std::optional<int64_t> im_end) {
  json eos = im_end ? json::array({*im_end, endoftext}) : json::array({endoftext});
  return {{"bos_token_id", endoftext},
          {"do_sample", true},
          {"eos_token_id", eos},
          {"pad_token_id", endoftext},
          {"repetition_penalty", 1.1},
          {"temperature", 0.7},
          {"top_k", 20},
          {"top_p", 0.8}};
}

json qwen_tokenizer_config(const json& tok, int64_t model_max_length) {
  // Mirrors Qwen1.5-Chat's tokenizer_config.json.
  std::string_view tmpl = embedded::find("chatml.jinja");
  if (tmpl.empty()) fail(ErrorCode::kInternal, "chatml.jinja is not embedded");
  json decoder = json::object(), additional = json::array();
  bool has_im_end = false;
  for (const json& a : tok.value("added_tokens", json::array())) {
    decoder[std::to_string(a.at("id").get<int64_t>())] = {
        {"content", a.at("content")},
        {"lstrip", a.value("lstrip", false)},
        {"normalized", a.value("normalized", false)},
        {"rstrip", a.value("rstrip", false)},
        {"single_word", a.value("single_word", false)},
        {"special", a.value("special", false)}};
    const std::string& c = a.at("content").get_ref<const std::string&>();
    if (c == "<|im_end|>") has_im_end = true;
    if (a.value("special", false) && c != "<|endoftext|>") additional.push_back(c);
  }
  return {{"add_prefix_space", false},
          {"added_tokens_decoder", decoder},
          {"additional_special_tokens", additional},
          {"bos_token", nullptr},
          {"chat_template", std::string(tmpl)},
          {"clean_up_tokenization_spaces", false},
          {"eos_token", has_im_end ? "<|im_end|>" : "<|endoftext|>"},
          {"errors", "replace"},
          {"model_max_length", model_max_length},
          {"pad_token", "<|endoftext|>"},
          {"split_special_tokens", false},
          {"tokenizer_class", "Qwen2Tokenizer"},
          {"unk_token", nullptr}};
}

InitModelResult init_model(const InitModelOptions& opt) {
  // --- tokenizer ---
  std::string tok_text, tok_origin;
  std::string tok_config_text;  // empty: generate one
  if (opt.tokenizer) {
    fs::path p = *opt.tokenizer;
    std::error_code ec;
    if (fs::is_directory(p, ec)) p /= "tokenizer.json";
    tok_text = read_file(p);
    tok_origin = p.string();
    if (fs::path c = p.parent_path() / "tokenizer_config.json"; fs::exists(c, ec))
      tok_config_text = read_file(c);  // copied verbatim
  } else {
    tok_text = default_tokenizer_json().dump(2, ' ', false) + "\n";
    tok_origin = "default tokenizer";
  }
  json tok = parse_json(tok_text, tok_origin);
  TokenizerFacts facts = tokenizer_facts(tok, tok_origin);
  if (!facts.endoftext) fail(ErrorCode::kFormat, "{}: no <|endoftext|> added token", tok_origin);

  // --- config ---
  ModelConfig c = ModelConfig::preset(opt.preset, facts.size);
  if (opt.vocab_size) {
    if (*opt.vocab_size < facts.size)
      fail(ErrorCode::kInvalidArgument, "--vocab-size {} is smaller than the tokenizer ({} tokens)",
           *opt.vocab_size, facts.size);
    c.vocab_size = *opt.vocab_size;
  }
  if (opt.dtype) {
    if (*opt.dtype != DType::kF32 && *opt.dtype != DType::kBF16 && *opt.dtype != DType::kF16)
      fail(ErrorCode::kInvalidArgument, "--dtype must be float32, bfloat16 or float16");
    c.torch_dtype = *opt.dtype;
  }
  c.bos_token_id = *facts.endoftext;
  c.eos_token_id = {facts.im_end.value_or(*facts.endoftext)};

  // --- weights ---
  Rng rng(opt.seed);
  std::vector<WeightSpec> specs = qwen2_weight_specs(c);
  std::vector<std::vector<uint8_t>> bufs;
  bufs.reserve(specs.size());
  InitModelResult res;
  HfModelFiles files;
  std::vector<float> vals;
  for (const WeightSpec& s : specs) {
    size_t n = 1;
    for (int64_t d : s.shape) n *= static_cast<size_t>(d);
    vals.resize(n);
    if (s.kind == WeightKind::kNorm) {
      std::fill(vals.begin(), vals.end(), 1.0f);
    } else {
      for (float& v : vals) v = static_cast<float>(rng.normal() * c.initializer_range);
    }
    bufs.push_back(from_f32(vals, c.torch_dtype));
    files.tensors.push_back({s.name, c.torch_dtype, s.shape, bufs.back()});
    res.parameters += n;
    res.bytes += bufs.back().size();
  }
  files.config = c;
  files.generation_config = qwen_generation_config(*facts.endoftext, facts.im_end);
  files.tokenizer_json = std::move(tok_text);
  if (tok_config_text.empty())
    files.tokenizer_config = qwen_tokenizer_config(tok, c.max_position_embeddings);
  else
    files.tokenizer_config_text = std::move(tok_config_text);
  files.max_shard_bytes = opt.max_shard_bytes;
  write_hf_model_dir(opt.out, files);
  res.config = c;
  log::info("init-model: preset {} ({}), {} parameters, {} bytes of weights, seed {} -> {}",
            opt.preset, dtype_torch_name(c.torch_dtype), res.parameters, res.bytes, opt.seed,
            opt.out.string());
  return res;
}

}  // namespace nnpipe
