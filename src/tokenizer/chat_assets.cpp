#include "tokenizer/chat_assets.h"

#include "core/error.h"
#include "core/log.h"
#include "io/hf_model_dir.h"

namespace nnpipe {
namespace {

std::string token_text(const ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return {};
}

}  // namespace

std::optional<std::string> parse_tokenizer_config(std::string_view text, const std::string& origin,
                                                  bool has_tools, ModelChatTemplate& out) {
  const ordered_json config = parse_ordered_json(text, origin);
  if (!config.is_object()) fail(ErrorCode::kFormat, "{}: expected a JSON object", origin);
  for (const char* key :
       {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (config.contains(key) && !config[key].is_null())
      if (std::string t = token_text(config[key]); !t.empty()) out.special_tokens[key] = t;
  auto it = config.find("chat_template");
  if (it == config.end()) return std::nullopt;
  return select_chat_template(json(*it), origin + ":chat_template", has_tools);
}

ModelChatTemplate load_model_chat_template(const fs::path& dir, bool has_tools) {
  ModelChatTemplate mt;
  fs::path config_path = dir / "tokenizer_config.json";
  std::optional<std::string> from_config;
  if (fs::exists(config_path))
    from_config =
        parse_tokenizer_config(read_file(config_path), config_path.string(), has_tools, mt);

  if (fs::path jinja = dir / "chat_template.jinja"; fs::exists(jinja)) {
    mt.source = read_file(jinja);
    mt.origin = jinja.string();
    return mt;
  }
  if (from_config) {
    mt.source = std::move(*from_config);
    mt.origin = config_path.string() + ":chat_template";
    return mt;
  }
  log::warn("{} has no chat_template: using the ChatML fallback (Qwen1.5-Chat's template)",
            dir.string());
  mt.source = chatml_template_source();
  mt.origin = "chatml-fallback";
  mt.fallback = true;
  return mt;
}

ChatAssets load_chat_assets(const fs::path& dir) {
  fs::path tok_path = dir / "tokenizer.json";
  if (!fs::exists(tok_path))
    fail(ErrorCode::kNotFound, "{}: no tokenizer.json in the model directory", dir.string());
  ModelChatTemplate mt = load_model_chat_template(dir);
  ChatAssets a{Tokenizer::from_file(tok_path)};
  a.chat_template.emplace(mt.source, mt.origin);
  a.template_is_fallback = mt.fallback;
  a.template_vars = std::move(mt.special_tokens);
  return a;
}

}  // namespace nnpipe
