#include "tokenizer/chat_assets.h"

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {
namespace {

// tokenizer_config.json stores special tokens as "<|im_end|>" or {"content": "<|im_end|>", ...}.
std::optional<std::string> token_string(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

ChatAssets load_chat_assets(const fs::path& dir) {
  fs::path tok_path = dir / "tokenizer.json";
  if (!fs::exists(tok_path))
    fail(ErrorCode::kNotFound, "{}: no tokenizer.json in the model directory", dir.string());
  ChatAssets a{Tokenizer::from_file(tok_path)};
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path)) {
    a.tokenizer_config = read_json_file(cfg_path);
    if (!a.tokenizer_config.is_object())
      fail(ErrorCode::kFormat, "{}: expected a JSON object", cfg_path.string());
  }
  for (const char* k : {"bos_token", "eos_token", "pad_token", "unk_token"})
    if (auto s = token_string(a.tokenizer_config, k)) a.template_vars[k] = *s;

  fs::path jinja = dir / "chat_template.jinja";
  if (fs::exists(jinja)) {
    a.chat_template.emplace(read_file(jinja), jinja.string());
    return a;
  }
  auto it = a.tokenizer_config.find("chat_template");
  std::string origin = cfg_path.string() + ": chat_template";
  if (it != a.tokenizer_config.end() && it->is_string()) {
    a.chat_template.emplace(it->get<std::string>(), origin);
  } else if (it != a.tokenizer_config.end() && it->is_array()) {
    for (const json& t : *it)
      if (t.is_object() && t.value("name", "") == "default" && t.contains("template") &&
          t["template"].is_string())
        a.chat_template.emplace(t["template"].get<std::string>(), origin + "[default]");
    if (!a.chat_template)
      fail(ErrorCode::kFormat, "{}: a list of templates without one named \"default\"", origin);
  } else if (it != a.tokenizer_config.end() && !it->is_null()) {
    fail(ErrorCode::kFormat, "{}: must be a string or a list, got {}", origin, json_type_name(*it));
  }
  if (!a.chat_template) {
    log::warn("{}: the model has no chat template; using ChatML", dir.string());
    a.chat_template.emplace(chatml_template_source(), "ChatML fallback");
    a.template_is_fallback = true;
  }
  return a;
}

}  // namespace nnpipe
