#include "pipeline/reply_margin.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace nnpipe {

json ReplyMargin::to_json() const {
  return {{"min", min}, {"mean", mean}, {"tokens", tokens}};
}

void MarginAccumulator::add(const float* logits, int64_t vocab, int32_t chosen) {
  if (chosen < 0 || chosen >= vocab)
    fail(ErrorCode::kInvalidArgument, "reply margin: token {} outside the vocabulary ({})", chosen,
         vocab);
  float best_other = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < vocab; ++v)
    if (v != chosen) best_other = std::max(best_other, logits[v]);
  const double m = static_cast<double>(logits[chosen]) - best_other;
  min_ = n_ == 0 ? m : std::min(min_, m);
  sum_ += m;
  ++n_;
}

ReplyMargin MarginAccumulator::result() const {
  return {min_, n_ ? sum_ / static_cast<double>(n_) : 0.0, n_};
}

ReplyMargin engine_reply_margin(engine::Session& s, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& reply) {
  if (prompt.empty() || reply.empty()) return {};
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), reply.begin(), reply.end());
  all.pop_back();  // the last reply token predicts nothing we score
  const std::vector<float> logits = s.all_logits(all);  // (n, V)
  const int64_t vocab = static_cast<int64_t>(logits.size() / all.size());
  MarginAccumulator acc;
  for (size_t i = 0; i < reply.size(); ++i)  // row prompt.size()-1+i predicts reply[i]
    acc.add(logits.data() + (prompt.size() - 1 + i) * static_cast<size_t>(vocab), vocab, reply[i]);
  return acc.result();
}

namespace {

ReplyMargin chat_margin(engine::Engine& eng, const std::vector<engine::AdapterSpec>& loras,
                        const ordered_json& messages, const std::vector<int32_t>& reply) {
  std::vector<std::string> rejected;
  engine::AdapterSet set = eng.adapter_set(loras, &rejected);
  if (!rejected.empty())
    fail(ErrorCode::kFormat, "reply margin: adapters rejected: {}", fmt::join(rejected, "; "));
  const ChatAssets& a = eng.model()->assets();
  static const ChatTemplate kChatml(chatml_template_source(), "ChatML");
  const std::string prompt = apply_chat_template(a.chat_template ? *a.chat_template : kChatml,
                                                 messages, true, a.template_vars);
  engine::Session s(eng.model());
  s.set_adapters(std::move(set));
  return engine_reply_margin(s, a.tokenizer.encode(prompt), reply);
}

}  // namespace

ReplyMargin chat_reply_margin(const fs::path& model, const std::vector<engine::AdapterSpec>& loras,
                              const ordered_json& messages, const std::vector<int32_t>& reply) {
  return chat_margin(*engine::Engine::open(model), loras, messages, reply);
}

ReplyMargin chat_reply_margin(const fs::path& model, const std::vector<engine::AdapterSpec>& loras,
                              const ordered_json& messages, const std::string& reply) {
  auto eng = engine::Engine::open(model);
  const Tokenizer& tok = eng->model()->assets().tokenizer;
  std::vector<int32_t> ids = tok.encode(reply);
  if (auto im_end = tok.token_to_id("<|im_end|>")) ids.push_back(*im_end);
  return chat_margin(*eng, loras, messages, ids);
}

}  // namespace nnpipe
