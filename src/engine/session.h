// A generation session over a shared Model: its own KV cache (Context), adapter set, sampler and
// chat history. Each prompt reuses the cached prefix it shares with what was evaluated before
// (multi-turn chat re-evaluates only the new suffix); changing the adapter set drops the cache.
// Text reaches the callback in UTF-8-safe pieces (a multi-byte character is never split) with
// stop strings held back until they can no longer match.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "engine/context.h"
#include "engine/generation.h"
#include "engine/sampler.h"

namespace nnpipe::engine {

struct GenerateResult {
  std::string text;
  std::vector<int32_t> tokens;  // generated ids (an EOG token that ended it included)
  int64_t prompt_tokens = 0;    // the whole prompt
  int64_t reused_tokens = 0;    // of which served from the cache
  double prompt_s = 0, gen_s = 0;
  // "eos", "stop_string", "max_tokens", "context" (the context filled up), "callback"
  std::string stop_reason;
  double prompt_tok_s() const;
  double gen_tok_s() const;
};

// Return false to stop generating.
using TokenCallback = std::function<bool(std::string_view piece)>;

struct SessionOptions {
  int64_t n_ctx = 0;      // 0: min(4096, the model's context length)
  int64_t n_batch = 512;  // prompt tokens per forward
};

class Session {
 public:
  explicit Session(std::shared_ptr<const Model> model, SessionOptions opt = {});

  const Model& model() const { return ctx_.model(); }
  Context& context() { return ctx_; }
  int64_t n_ctx() const { return ctx_.n_ctx(); }

  // Takes effect for the next prompt; a different set drops the KV cache.
  void set_adapters(AdapterSet set);
  const AdapterSet& adapters() const { return ctx_.adapters(); }

  // Continues `prompt` (ids). Throws kInvalidArgument when the prompt is empty or does not fit
  // the context, with what to do about it.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateParams& p,
                          const TokenCallback& cb = {});
  // Raw text completion (no template). Invalid UTF-8 in `prompt` becomes U+FFFD.
  GenerateResult complete(std::string_view prompt, const GenerateParams& p,
                          const TokenCallback& cb = {});
  // One chat turn through the model's chat template; the reply joins the history.
  GenerateResult chat(std::string_view user, const GenerateParams& p, const TokenCallback& cb = {});
  void set_system(std::string system);  // before the first turn (resets the history)
  void reset();                         // history and cache
  const ordered_json& history() const { return history_; }
  // Replaces the history (the WASI-NN backend drops the oldest turns when the context is full);
  // the cache keeps serving the prefix the next prompt shares with it.
  void set_history(ordered_json history) { history_ = std::move(history); }
  // The rendered prompt of the last chat turn.
  const std::string& last_prompt() const { return last_prompt_; }

  // Logits (n, V) of every position of `tokens`, evaluated from an empty cache.
  std::vector<float> all_logits(const std::vector<int32_t>& tokens);

 private:
  // Evaluates prompt[from..) in batches; returns the last token's logits.
  const float* eval(const std::vector<int32_t>& prompt, int64_t from);

  Context ctx_;
  SessionOptions opt_;
  std::vector<int32_t> cached_;  // tokens whose K/V are in the cache, in order
  ordered_json history_ = ordered_json::array();
  std::string system_;
  std::string last_prompt_;
};

// Text with invalid UTF-8 sequences replaced by U+FFFD (what the tokenizer is given).
std::string sanitize_utf8(std::string_view s);

}  // namespace nnpipe::engine
