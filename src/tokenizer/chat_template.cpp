// Public face of the chat-template interpreter (jinja_*.cpp): parsing once, rendering with the
// variables transformers' apply_chat_template passes.
#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace nnpipe {

struct ChatTemplate::Impl {
  std::string source;
  std::unique_ptr<jinja::Template> tmpl;
};

ChatTemplate::ChatTemplate(const std::string& source, std::string origin)
    : impl_(std::make_unique<Impl>()) {
  impl_->source = source;
  impl_->tmpl = jinja::parse_template(source, origin);
}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

const std::string& ChatTemplate::source() const {
  return impl_->source;
}

std::string ChatTemplate::render(const json& context) const {
  return jinja::render(*impl_->tmpl, jinja::from_json(context));
}
std::string ChatTemplate::render(const ordered_json& context) const {
  return jinja::render(*impl_->tmpl, jinja::from_json(context));
}

namespace {

// transformers 5.x (tokenization_utils_base.apply_chat_template + chat_template_utils
// .render_jinja_template): drops None-valued message keys, copies the first non-None of
// reasoning_content/thinking/reasoning to "thinking" (first) and "reasoning_content" (last), and
// renders with messages, tools=None, documents=None, add_generation_prompt and the kwargs.
template <typename J>
std::string apply_impl(const ChatTemplate& tmpl, const J& messages, bool add_generation_prompt,
                       const J& extra) {
  if (!messages.is_array())
    fail(ErrorCode::kInvalidArgument, "chat messages must be a JSON array, got {}",
         messages.type_name());
  if (messages.empty())
    fail(ErrorCode::kInvalidArgument, "Cannot apply chat template to an empty conversation");
  if (!extra.is_object())
    fail(ErrorCode::kInvalidArgument, "chat template variables must be a JSON object");
  J msgs = J::array();
  for (auto& m : messages) {
    if (!m.is_object())
      fail(ErrorCode::kInvalidArgument, "chat messages must be JSON objects, got {}",
           m.type_name());
    J clean = J::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) clean[it.key()] = it.value();
    for (const char* field : {"reasoning_content", "thinking", "reasoning"}) {
      auto it = clean.find(field);
      if (it == clean.end()) continue;
      J reasoning = *it;
      J aliased = J::object();
      aliased["thinking"] = reasoning;
      for (auto kv = clean.begin(); kv != clean.end(); ++kv) aliased[kv.key()] = kv.value();
      aliased["reasoning_content"] = reasoning;
      clean = std::move(aliased);
      break;
    }
    msgs.push_back(std::move(clean));
  }
  J ctx = J::object();
  ctx["messages"] = std::move(msgs);
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
  ctx["add_generation_prompt"] = add_generation_prompt;
  return tmpl.render(ctx);
}

}  // namespace

std::string apply_chat_template(const ChatTemplate& tmpl, const json& messages,
                                bool add_generation_prompt, const json& extra) {
  return apply_impl(tmpl, messages, add_generation_prompt, extra);
}
std::string apply_chat_template(const ChatTemplate& tmpl, const ordered_json& messages,
                                bool add_generation_prompt, const ordered_json& extra) {
  return apply_impl(tmpl, messages, add_generation_prompt, extra);
}

const std::string& chatml_template_source() {
  static const std::string kSource =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
      "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% "
      "endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  return kSource;
}

}  // namespace nnpipe
