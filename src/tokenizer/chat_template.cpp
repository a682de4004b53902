// Public face of the chat-template interpreter (jinja_*.cpp): parsing once, rendering with the
// variables transformers' apply_chat_template passes.
#include "tokenizer/chat_template.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/jinja.h"

namespace nnpipe {

struct ChatTemplate::Impl {
  std::string source;
  std::unique_ptr<jinja::Template> tmpl;
};

ChatTemplate::ChatTemplate(const std::string& source, std::string origin)
    : impl_(std::make_unique<Impl>()) {
  if (source.size() > jinja::kMaxTemplateBytes)
    fail(ErrorCode::kFormat, "{}: chat template is {} bytes, more than the {} allowed", origin,
         source.size(), jinja::kMaxTemplateBytes);
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

bool ChatRendering::is_literal(size_t offset) const {
  return std::binary_search(literal_specials.begin(), literal_specials.end(), offset);
}

namespace {

// Marks the private-use characters U+E000..U+F8FF that occur in `s` (UTF-8: EE/EF lead bytes).
void mark_private_use(std::string_view s, std::vector<bool>& used) {
  for (size_t k = 0; k + 2 < s.size(); ++k) {
    auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    if (b(k) != 0xEE && b(k) != 0xEF) continue;
    char32_t cp = (char32_t{b(k)} & 0x0F) << 12 | (char32_t{b(k + 1)} & 0x3F) << 6 |
                  (char32_t{b(k + 2)} & 0x3F);
    if (cp >= 0xE000 && cp <= 0xF8FF) used[cp - 0xE000] = true;
  }
}

size_t utf8_char_len(std::string_view s, size_t at) {
  size_t n = 1;
  while (at + n < s.size() && (static_cast<unsigned char>(s[at + n]) & 0xC0) == 0x80) ++n;
  return n;
}

}  // namespace

ChatRendering render_chat(const ChatTemplate& tmpl, const ordered_json& messages,
                          bool add_generation_prompt, const ordered_json& extra,
                          const std::vector<std::string>& specials, const std::string& origin) {
  ChatRendering r;
  // Where each special token's text starts inside each message's content.
  std::vector<std::vector<size_t>> hits(messages.is_array() ? messages.size() : 0);
  size_t first_msg = 0;
  std::string first_special;
  for (size_t m = 0; m < hits.size(); ++m) {
    const ordered_json& msg = messages[m];
    if (!msg.is_object()) continue;
    auto c = msg.find("content");
    if (c == msg.end() || !c->is_string()) continue;
    const std::string& text = c->get_ref<const std::string&>();
    for (const std::string& sp : specials)
      for (size_t at = sp.empty() ? std::string::npos : text.find(sp); at != std::string::npos;
           at = text.find(sp, at + 1))
        if (hits[m].push_back(at + utf8_char_len(sp, 0)); first_special.empty()) {
          first_msg = m;
          first_special = sp;
        }
    std::sort(hits[m].begin(), hits[m].end());
    hits[m].erase(std::unique(hits[m].begin(), hits[m].end()), hits[m].end());
  }
  r.text = apply_chat_template(tmpl, messages, add_generation_prompt, extra);
  if (first_special.empty()) return r;  // the usual case: one rendering, nothing to tell apart

  std::vector<bool> used(0xF8FF - 0xE000 + 1);
  mark_private_use(messages.dump(-1, ' ', false, ordered_json::error_handler_t::replace), used);
  mark_private_use(extra.dump(-1, ' ', false, ordered_json::error_handler_t::replace), used);
  mark_private_use(tmpl.source(), used);
  auto free_cp = std::find(used.begin(), used.end(), false);
  if (free_cp == used.end())
    fail(ErrorCode::kUnsupported,
         "{}: cannot mark special-token text in the messages: every private-use character is "
         "taken",
         origin);
  char32_t cp = 0xE000 + static_cast<char32_t>(free_cp - used.begin());
  std::string marker = {static_cast<char>(0xE0 | (cp >> 12)),
                        static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                        static_cast<char>(0x80 | (cp & 0x3F))};

  ordered_json marked = messages;
  for (size_t m = 0; m < hits.size(); ++m) {
    if (hits[m].empty()) continue;
    const std::string& text = messages[m]["content"].get_ref<const std::string&>();
    std::string out;
    size_t done = 0;
    for (size_t at : hits[m]) {
      out.append(text, done, at - done);
      out += marker;
      done = at;
    }
    out.append(text, done);
    marked[m]["content"] = std::move(out);
  }
  std::string esc = apply_chat_template(tmpl, marked, add_generation_prompt, extra);
  std::string text;
  text.reserve(esc.size());
  size_t done = 0;
  for (size_t q = esc.find(marker); q != std::string::npos; q = esc.find(marker, done)) {
    text.append(esc, done, q - done);
    done = q + marker.size();
    if (text.empty()) continue;
    size_t p = text.size() - 1;  // the special token's first character is the one before
    while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
    r.literal_specials.push_back(p);
  }
  text.append(esc, done);
  if (text != r.text)
    fail(ErrorCode::kUnsupported,
         "{}: the chat template renders differently when the special-token text inside the "
         "messages is marked as text, so it cannot be told apart from the template's own special "
         "tokens; remove the text \"{}\" from message {} (and any other special-token text)",
         origin, first_special, first_msg);
  std::sort(r.literal_specials.begin(), r.literal_specials.end());
  r.literal_specials.erase(std::unique(r.literal_specials.begin(), r.literal_specials.end()),
                           r.literal_specials.end());
  return r;
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
