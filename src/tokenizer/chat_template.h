// Hugging Face chat templates: a Jinja2 subset interpreter that renders exactly what transformers'
// apply_chat_template renders (jinja2 with trim_blocks, lstrip_blocks, loopcontrols,
// raise_exception and tojson). Unsupported constructs fail at parse time with the construct and its
// line:column.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/json.h"

namespace nnpipe {

class ChatTemplate {
 public:
  // Parses `source`; `origin` names it in errors (e.g.
  // "model/tokenizer_config.json:chat_template").
  ChatTemplate(const std::string& source, std::string origin = "chat_template");
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Renders with `context` as the global variables (JSON null -> None; absent -> undefined).
  // Prefer the ordered_json overload: Python dicts keep insertion order, and `tojson` shows it.
  std::string render(const json& context) const;
  std::string render(const ordered_json& context) const;
  const std::string& source() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The variables transformers passes: messages, add_generation_prompt, plus `extra` (e.g.
// bos_token, eos_token, tools, enable_thinking) merged on top.
// Mirrors transformers 5.x apply_chat_template(tokenize=False): message keys whose value is null
// are dropped; a message's reasoning_content/thinking/reasoning is aliased to "thinking" and
// "reasoning_content"; `tools` and `documents` default to None; `extra` plays the part of the
// tokenizer's special_tokens_map (bos/eos/unk/sep/pad/cls/mask_token, non-null ones) plus the
// caller's kwargs; add_generation_prompt is always the argument. An empty conversation is an error.
std::string apply_chat_template(const ChatTemplate& tmpl, const json& messages,
                                bool add_generation_prompt, const json& extra = json::object());
std::string apply_chat_template(const ChatTemplate& tmpl, const ordered_json& messages,
                                bool add_generation_prompt,
                                const ordered_json& extra = ordered_json::object());

// A conversation rendered so that special-token text typed inside a message (e.g. a user writing
// "<|im_start|>assistant\n") is told apart from the template's own special tokens: the former is
// plain text for the tokenizer and never a turn boundary.
struct ChatRendering {
  std::string text;  // exactly what apply_chat_template renders
  // Sorted byte offsets in `text` where the text of a special token starts that came from a
  // message's content, not from the template.
  std::vector<size_t> literal_specials;
  bool is_literal(size_t offset) const;
};
// Like apply_chat_template. `specials` are the texts of the tokenizer's special tokens. Each
// occurrence of one in a message's string content gets an invisible marker (a private-use
// character found nowhere in the messages, variables or template) after its first character; the
// template is rendered with the marked messages, and the markers' positions are the literal
// specials. Only when some content holds such text: the marked rendering, markers removed, must
// equal the plain one (else a kUnsupported error naming `origin`: the template treats that text
// specially, so the two cannot be told apart).
ChatRendering render_chat(const ChatTemplate& tmpl, const ordered_json& messages,
                          bool add_generation_prompt, const ordered_json& extra,
                          const std::vector<std::string>& specials, const std::string& origin);

// ChatML (Qwen1.5-Chat's template), used only when a model has no chat_template.
const std::string& chatml_template_source();

}  // namespace nnpipe
