// Greedy generation with the training model: a full forward per new token (no KV cache — the
// inference engine has one). Used to show, and test, what a fine-tuned model now answers.
#pragma once
#include <cstdint>
#include <vector>

#include "core/json.h"
#include "model/qwen2.h"
#include "tokenizer/chat_assets.h"

namespace nnpipe {

struct GreedyOptions {
  int64_t max_new_tokens = 64;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  // When set, receives each new token's top-1 margin: its logit minus the best other logit.
  std::vector<float>* margins = nullptr;
};

// New tokens (a stop token included when one ended generation). The model is put in eval mode.
std::vector<int32_t> greedy_generate(Qwen2Model& model, const std::vector<int32_t>& prompt,
                                     const GreedyOptions& opt);

// The model of `dir` for generation, with the PEFT adapter `lora` attached unless it is empty
// (the base then stays in its stored half precision).
Qwen2Model load_for_chat(const fs::path& dir, const fs::path& lora = {});

struct ChatReply {
  std::string prompt;  // the rendered prompt (generation prompt included)
  std::string text;    // the reply, special tokens removed
  int64_t prompt_tokens = 0, new_tokens = 0;
  float min_margin = 0, mean_margin = 0;  // top-1 margins of the new tokens (logits)
};
// Renders `messages` with the model's chat template (add_generation_prompt) and generates until
// <|im_end|> or an eos id of the config.
ChatReply chat_reply(Qwen2Model& model, const ChatAssets& assets, const ordered_json& messages,
                     int64_t max_new_tokens = 64);

}  // namespace nnpipe
