// A model directory's tokenizer and chat template, as transformers' AutoTokenizer sees them.
#pragma once
#include <optional>

#include "core/json.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

// The chat template of a model directory and the special tokens transformers passes with it.
struct ModelChatTemplate {
  std::string source;
  std::string origin;     // names the template in errors
  bool fallback = false;  // the model has none: ChatML
  // bos/eos/unk/sep/pad/cls/mask tokens of tokenizer_config.json (strings or {"content": ...}),
  // in that order, as template variables.
  ordered_json special_tokens = ordered_json::object();
};

// The text of a tokenizer_config.json (untrusted: it comes with a model): its special tokens, and
// its "chat_template" (see select_chat_template) in `source`, or nullopt when it has none.
// Errors name `origin` (the file) and the key.
std::optional<std::string> parse_tokenizer_config(std::string_view text, const std::string& origin,
                                                  bool has_tools, ModelChatTemplate& out);

// DIR/chat_template.jinja if present (transformers >= 4.43 saves it there), else
// tokenizer_config.json "chat_template" (a string, or named templates: "tool_use" when
// `has_tools`, else "default"), else ChatML with a warning.
ModelChatTemplate load_model_chat_template(const fs::path& model_dir, bool has_tools = false);

struct ChatAssets {
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;
  bool template_is_fallback = false;
  ordered_json template_vars = ordered_json::object();  // the special tokens
};

// DIR/tokenizer.json plus load_model_chat_template(DIR).
ChatAssets load_chat_assets(const fs::path& model_dir);

}  // namespace nnpipe
