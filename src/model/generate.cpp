#include "model/generate.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace nnpipe {

std::vector<int32_t> greedy_generate(Qwen2Model& model, const std::vector<int32_t>& prompt,
                                     const GreedyOptions& opt) {
  if (prompt.empty()) fail(ErrorCode::kInvalidArgument, "generate: empty prompt");
  model.set_training(false, nullptr);
  const int64_t ctx = model.config().max_position_embeddings;
  std::vector<int32_t> ids = prompt, out;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    if (static_cast<int64_t>(ids.size()) >= ctx) break;
    Qwen2Batch b;
    b.batch = 1;
    b.seq = static_cast<int64_t>(ids.size());
    b.input_ids = ids;
    model.forward(b);
    const Tensor& logits = model.logits();  // (1, T, V)
    const int64_t v = logits.dim(2);
    const float* last = reinterpret_cast<const float*>(logits.raw()) + (b.seq - 1) * v;
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + v) - last);
    if (opt.margins) {
      float other = -std::numeric_limits<float>::infinity();
      for (int64_t k = 0; k < v; ++k)
        if (k != next) other = std::max(other, last[k]);
      opt.margins->push_back(last[next] - other);
    }
    out.push_back(next);
    ids.push_back(next);
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next) != opt.stop_ids.end()) break;
  }
  return out;
}

Qwen2Model load_for_chat(const fs::path& dir, const fs::path& lora) {
  Qwen2Model model = Qwen2Model::load(dir, cpu_backend(), Qwen2LoadOptions{!lora.empty()});
  if (!lora.empty()) model.attach_lora(PeftAdapter::load(lora), lora.string());
  return model;
}

ChatReply chat_reply(Qwen2Model& model, const ChatAssets& assets, const ordered_json& messages,
                     int64_t max_new_tokens) {
  if (!assets.chat_template) fail(ErrorCode::kNotFound, "generate: the model has no chat template");
  ChatReply r;
  // As Session::chat: special-token text typed in a message is text, not a control token.
  ChatRendering cr = render_chat(*assets.chat_template, messages, true, assets.template_vars,
                                 assets.tokenizer.special_texts(), "chat template");
  r.prompt = cr.text;
  std::vector<int32_t> prompt = assets.tokenizer.encode(r.prompt, cr.literal_specials);
  GreedyOptions opt;
  opt.max_new_tokens = max_new_tokens;
  for (int64_t id : model.config().eos_token_id) opt.stop_ids.push_back(static_cast<int32_t>(id));
  if (auto im_end = assets.tokenizer.token_to_id("<|im_end|>")) opt.stop_ids.push_back(*im_end);
  std::vector<float> margins;
  opt.margins = &margins;
  std::vector<int32_t> out = greedy_generate(model, prompt, opt);
  if (!margins.empty()) {
    r.min_margin = *std::min_element(margins.begin(), margins.end());
    r.mean_margin =
        std::accumulate(margins.begin(), margins.end(), 0.0f) / static_cast<float>(margins.size());
  }
  r.prompt_tokens = static_cast<int64_t>(prompt.size());
  r.new_tokens = static_cast<int64_t>(out.size());
  r.text = assets.tokenizer.decode(out, /*skip_special=*/true);
  return r;
}

}  // namespace nnpipe
