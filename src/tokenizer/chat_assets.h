// A model directory's tokenizer and chat template, as transformers' AutoTokenizer sees them.
#pragma once
#include <optional>

#include "core/json.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

struct ChatAssets {
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;
  bool template_is_fallback = false;  // the model has none: ChatML
  // Template variables besides messages: bos_token, eos_token, pad_token, unk_token (strings or
  // absent), as transformers passes its special tokens.
  json template_vars = json::object();
  json tokenizer_config = json::object();  // tokenizer_config.json, or {} if absent
};

// Reads DIR/tokenizer.json, DIR/tokenizer_config.json and the chat template:
// DIR/chat_template.jinja if present (transformers >= 4.43 saves it there), else
// tokenizer_config.json "chat_template" (a string, or a list of {name, template} from which
// "default" is used), else ChatML with a warning.
ChatAssets load_chat_assets(const fs::path& model_dir);

}  // namespace nnpipe
