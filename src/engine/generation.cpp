#include "engine/generation.h"

#include <algorithm>

#include "core/error.h"

namespace nnpipe::engine {

namespace {

// Bytes at the end of `text` that could start one of the stop strings (held back while streaming).
size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
  return hold;
}

// Never cut inside a UTF-8 character: move `n` back to a character boundary.
size_t utf8_floor(std::string_view s, size_t n) {
  while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return n;
}

}  // namespace

Generation::Generation(const Model& model, const GenerateParams& p, std::vector<int32_t> prompt)
    : model_(model),
      p_(p),
      sampler_(p.sampling),
      dec_(model.assets().tokenizer, /*skip_special=*/true),
      history_(std::move(prompt)) {
  if (p_.max_tokens < 0) fail(ErrorCode::kInvalidArgument, "max tokens must be >= 0");
  std::erase_if(p_.stop, [](const std::string& s) { return s.empty(); });
  for (const std::string& s : p_.stop) max_stop_ = std::max(max_stop_, s.size());
  if (p_.max_tokens == 0) finish("max_tokens");
}

bool Generation::step(std::span<const float> logits) {
  if (finished_) fail(ErrorCode::kInternal, "generation: a step after the end ({})", reason_);
  const int32_t id = sampler_.sample(logits, history_);
  tokens_.push_back(id);
  history_.push_back(id);
  if (!p_.ignore_eos && model_.is_eog(id)) {
    finish("eos");
    return false;
  }
  const size_t before = text_.size();
  text_ += dec_.push(id);
  if (max_stop_ > 0) {
    // Only the new text (and the stop length before it) can hold a new match.
    size_t cut = std::string::npos;
    const size_t from = before >= max_stop_ ? before - max_stop_ + 1 : 0;
    for (const std::string& s : p_.stop)
      if (size_t at = text_.find(s, from); at != std::string::npos) cut = std::min(cut, at);
    if (cut != std::string::npos) {
      text_.resize(cut);
      finished_ = true;
      reason_ = "stop_string";
      ready_ = text_.size();
      return false;
    }
  }
  ready_ = std::max(ready_, utf8_floor(text_, text_.size() - stop_holdback(text_, p_.stop)));
  if (static_cast<int64_t>(tokens_.size()) >= p_.max_tokens) {
    finish("max_tokens");
    return false;
  }
  return true;
}

void Generation::finish(std::string reason) {
  if (finished_) return;
  finished_ = true;
  reason_ = std::move(reason);
  text_ += dec_.flush();
  ready_ = text_.size();
}

std::string Generation::take() {
  const size_t upto = std::max(ready_, taken_);
  std::string piece = text_.substr(taken_, upto - taken_);
  taken_ = upto;
  return piece;
}

}  // namespace nnpipe::engine
