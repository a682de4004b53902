#include "engine/session.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/chat_template.h"

namespace nnpipe::engine {

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t default_ctx(const Model& m, int64_t want) {
  if (want > 0) return want;
  return std::min<int64_t>(4096, m.config().max_position_embeddings);
}

}  // namespace

double GenerateResult::prompt_tok_s() const {
  const double n = static_cast<double>(prompt_tokens - reused_tokens);
  return prompt_s > 0 ? n / prompt_s : 0;
}
double GenerateResult::gen_tok_s() const {
  return gen_s > 0 ? static_cast<double>(tokens.size()) / gen_s : 0;
}

std::string sanitize_utf8(std::string_view s) {
  return utf8::find_invalid(s) == std::string_view::npos ? std::string(s) : utf8::lossy(s);
}

Session::Session(std::shared_ptr<const Model> model, SessionOptions opt)
    : ctx_(model, default_ctx(*model, opt.n_ctx)), opt_(opt) {
  if (opt_.n_batch <= 0) opt_.n_batch = 512;
}

void Session::set_adapters(AdapterSet set) {
  const bool same = same_adapters(set, ctx_.adapters());
  ctx_.set_adapters(std::move(set));
  if (!same) cached_.clear();
}

void Session::set_system(std::string system) {
  system_ = std::move(system);
  history_ = ordered_json::array();
}

void Session::reset() {
  history_ = ordered_json::array();
  cached_.clear();
  ctx_.truncate(0);
}

const float* Session::eval(const std::vector<int32_t>& prompt, int64_t from) {
  const float* logits = nullptr;
  const int64_t n = static_cast<int64_t>(prompt.size());
  for (int64_t i = from; i < n; i += opt_.n_batch) {
    const int64_t m = std::min(opt_.n_batch, n - i);
    logits = ctx_.forward(prompt.data() + i, m);
    cached_.insert(cached_.end(), prompt.begin() + i, prompt.begin() + i + m);
  }
  return logits;
}

std::vector<float> Session::all_logits(const std::vector<int32_t>& tokens) {
  cached_.clear();
  ctx_.truncate(0);
  if (tokens.empty()) fail(ErrorCode::kInvalidArgument, "all_logits: no tokens");
  if (static_cast<int64_t>(tokens.size()) > ctx_.n_ctx())
    fail(ErrorCode::kInvalidArgument,
         "{} tokens but the context is {}: raise --ctx-size or use fewer tokens", tokens.size(),
         ctx_.n_ctx());
  const int64_t V = model().vocab_size(), n = static_cast<int64_t>(tokens.size());
  std::vector<float> out(static_cast<size_t>(n * V));
  for (int64_t i = 0; i < n; i += opt_.n_batch) {
    const int64_t m = std::min(opt_.n_batch, n - i);
    const float* l = ctx_.forward(tokens.data() + i, m, true);
    std::copy(l, l + m * V, out.begin() + i * V);
    cached_.insert(cached_.end(), tokens.begin() + i, tokens.begin() + i + m);
  }
  return out;
}

GenerateResult Session::generate(const std::vector<int32_t>& prompt, const GenerateParams& p,
                                 const TokenCallback& cb) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n == 0)
    fail(ErrorCode::kInvalidArgument,
         "the prompt is empty: there is nothing to continue (give some text, or chat)");
  if (n > ctx_.n_ctx())
    fail(ErrorCode::kInvalidArgument,
         "prompt is {} tokens but the context is {}: raise --ctx-size or shorten the prompt", n,
         ctx_.n_ctx());
  Generation g(model(), p, prompt);  // checks p
  GenerateResult r;
  r.prompt_tokens = n;

  // Reuse the cached prefix; at least the last prompt token is evaluated (its logits are needed).
  size_t common = 0;
  while (common < cached_.size() && common < prompt.size() && cached_[common] == prompt[common])
    ++common;
  if (common == prompt.size()) --common;
  cached_.resize(common);
  ctx_.truncate(static_cast<int64_t>(common));
  r.reused_tokens = static_cast<int64_t>(common);

  const auto t0 = Clock::now();
  const float* logits = eval(prompt, static_cast<int64_t>(common));
  const auto t1 = Clock::now();
  r.prompt_s = seconds(t0, t1);

  const int64_t V = model().vocab_size();
  while (!g.finished()) {
    const bool more = g.step(std::span<const float>(logits, static_cast<size_t>(V)));
    if (const std::string piece = g.take(); !piece.empty() && cb && !cb(piece) && more) {
      g.finish("callback");
      break;
    }
    if (!more) break;
    if (ctx_.n_past() >= ctx_.n_ctx()) {
      g.finish("context");
      break;
    }
    const int32_t id = g.last();
    logits = ctx_.forward(&id, 1);
    cached_.push_back(id);
  }
  if (const std::string piece = g.take(); !piece.empty() && cb && g.stop_reason() != "callback")
    cb(piece);
  r.text = g.text();
  r.tokens = g.tokens();
  r.stop_reason = g.stop_reason();
  r.gen_s = seconds(t1, Clock::now());
  return r;
}

GenerateResult Session::complete(std::string_view prompt, const GenerateParams& p,
                                 const TokenCallback& cb) {
  return generate(model().assets().tokenizer.encode(sanitize_utf8(prompt)), p, cb);
}

GenerateResult Session::chat(std::string_view user, const GenerateParams& p,
                             const TokenCallback& cb) {
  const ChatAssets& a = model().assets();
  ordered_json messages = ordered_json::array();
  if (!system_.empty()) messages.push_back({{"role", "system"}, {"content", system_}});
  for (const auto& m : history_) messages.push_back(m);
  messages.push_back({{"role", "user"}, {"content", sanitize_utf8(user)}});
  static const ChatTemplate kChatml(chatml_template_source(), "ChatML");
  const ChatTemplate& tmpl = a.chat_template ? *a.chat_template : kChatml;
  // Special-token text typed in a message stays text (docs/DESIGN.md, "Special tokens in
  // messages"): only the template's own markup becomes control tokens.
  ChatRendering cr = render_chat(tmpl, messages, true, a.template_vars, a.tokenizer.special_texts(),
                                 "chat template");
  last_prompt_ = cr.text;
  GenerateResult r = generate(a.tokenizer.encode(last_prompt_, cr.literal_specials), p, cb);
  history_.push_back(messages.back());
  history_.push_back({{"role", "assistant"}, {"content", r.text}});
  return r;
}

}  // namespace nnpipe::engine
