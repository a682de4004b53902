// How clearly a model chose its greedy reply: at each reply position, the logit of the chosen
// token minus the best other logit (the top-1 margin, in logits). A reply that is "right" only by
// a hair (margin near 0) is luck; a trained reply has a clear one. The pipeline reports the
// minimum and mean over a reply's tokens in its steps' summary.json.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/json.h"
#include "engine/engine.h"

namespace nnpipe {

struct ReplyMargin {
  double min = 0, mean = 0;
  int64_t tokens = 0;  // positions scored
  json to_json() const;
};

// Adds the margin of `chosen` in one row of `vocab` logits.
class MarginAccumulator {
 public:
  void add(const float* logits, int64_t vocab, int32_t chosen);
  ReplyMargin result() const;

 private:
  double min_ = 0, sum_ = 0;
  int64_t n_ = 0;
};

// Teacher-forced on the engine: `prompt` + `reply` through the session's model and adapters from
// an empty cache; the margins at the reply's positions.
ReplyMargin engine_reply_margin(engine::Session& s, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& reply);

// A chat reply on the engine: `messages` rendered with the model's chat template and the generation
// prompt, then `reply` (ids as generated; an ending <|im_end|> included) scored as above with the
// adapters of `loras`. Used on the replies of run_inference and of the WASI-NN backend.
ReplyMargin chat_reply_margin(const fs::path& model, const std::vector<engine::AdapterSpec>& loras,
                              const ordered_json& messages, const std::vector<int32_t>& reply);
// The same for a reply known only as text: its ids are encode(text) + <|im_end|>.
ReplyMargin chat_reply_margin(const fs::path& model, const std::vector<engine::AdapterSpec>& loras,
                              const ordered_json& messages, const std::string& reply);

}  // namespace nnpipe
