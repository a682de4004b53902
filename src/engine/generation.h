// One generation's token-by-token state, shared by Session (one sequence) and the server's
// scheduler (many sequences in one batch): sampling in llama.cpp's order, end-of-generation
// tokens, stop strings and the text streamed in UTF-8-safe pieces (a multi-byte character is
// never split; bytes that could start a stop string are held back until they cannot).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe::engine {

struct GenerateParams {
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (not included in the text)
  bool ignore_eos = false;        // keep going past end-of-generation tokens
};

class Generation {
 public:
  // `prompt` is the history the penalties see first. Finished at once when max_tokens is 0.
  Generation(const Model& model, const GenerateParams& p, std::vector<int32_t> prompt);

  // Samples the next token from logits (V). Returns true when the token must be evaluated for
  // the next step, false when the generation ended ("eos", "stop_string", "max_tokens").
  bool step(std::span<const float> logits);
  // Ends it early: "context" (the cache is full), "callback" (the consumer stopped), or any
  // reason the caller reports. No effect once finished.
  void finish(std::string reason);

  bool finished() const { return finished_; }
  int32_t last() const { return tokens_.back(); }
  // The text that can be streamed now, not yet taken (everything once finished).
  std::string take();
  const std::string& text() const { return text_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::string& stop_reason() const { return reason_; }

 private:
  const Model& model_;
  GenerateParams p_;
  Sampler sampler_;
  StreamDecoder dec_;
  std::vector<int32_t> history_, tokens_;
  std::string text_, reason_;
  size_t ready_ = 0, taken_ = 0;
  size_t max_stop_ = 0;
  bool finished_ = false;
};

}  // namespace nnpipe::engine
