// Hugging Face chat templates: a Jinja2 subset interpreter that renders exactly what transformers'
// apply_chat_template renders (jinja2 with trim_blocks, lstrip_blocks, loopcontrols,
// raise_exception and tojson). Unsupported constructs fail at parse time with the construct and its
// line:column.
#pragma once
#include <memory>
#include <string>

#include "core/json.h"

namespace nnpipe {

class ChatTemplate {
 public:
  // Parses `source`; `origin` names it in errors (e.g. "model/tokenizer_config.json:chat_template").
  ChatTemplate(const std::string& source, std::string origin = "chat_template");
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Renders with `context` as the global variables (JSON null -> None; absent -> undefined).
  std::string render(const json& context) const;
  const std::string& source() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The variables transformers passes: messages, add_generation_prompt, plus `extra` (e.g.
// bos_token, eos_token, tools, enable_thinking) merged on top.
std::string apply_chat_template(const ChatTemplate& tmpl, const json& messages, bool add_generation_prompt,
                                const json& extra = json::object());

// ChatML (Qwen1.5-Chat's template), used only when a model has no chat_template.
const std::string& chatml_template_source();

}  // namespace nnpipe
