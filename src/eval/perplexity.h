// Perplexity of a model on a text, computed as llama.cpp's llama-perplexity does (so the numbers
// compare directly): the text's tokens are cut into chunks of n_ctx, each chunk runs from an empty
// context, and the second half of each chunk is scored (positions n_ctx/2 .. n_ctx-2 predict the
// next token). With a base model, the KL divergence KL(base || model) and the top-1 agreement are
// computed over the same positions (llama-perplexity --kl-divergence's definitions).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/file.h"
#include "model/qwen2.h"
#include "tokenizer/tokenizer.h"

namespace nnpipe {

// An HF directory (f32/f16/bf16 or a quantized checkpoint) or a .gguf file, loaded for evaluation
// with f32 compute, plus its tokenizer.
struct EvalModel {
  Qwen2Model model;
  Tokenizer tokenizer;
  std::string kind;  // "hf" or the GGUF's general.file_type name, e.g. "gguf"
};
EvalModel load_eval_model(const fs::path& path);

// The smallest chunk: positions n_ctx/2 .. n_ctx-2 are scored, so fewer scores nothing.
inline constexpr int64_t kMinPerplexityCtx = 4;

struct PerplexityOptions {
  int64_t n_ctx = 128;
  int64_t max_chunks = -1;  // < 0: every whole chunk
  // Called after each chunk with (chunks done, chunks total).
  std::function<void(int64_t, int64_t)> progress;
};

struct PerplexityResult {
  int64_t tokens = 0;     // tokens in the text
  int64_t chunks = 0;     // chunks evaluated
  int64_t scored = 0;     // positions scored
  double nll = 0;         // mean negative log-likelihood (nats)
  double ppl = 0;         // exp(nll)
  double ppl_stderr = 0;  // standard error of ppl (delta method, as llama-perplexity)
  bool has_base = false;
  double kl_mean = 0;  // mean KL(base || model), nats
  double kl_max = 0;
  double top1_agree = 0;  // fraction of positions where both argmax agree
  double base_ppl = 0;
};

// Scores `tokens` with `model` (and optionally `base` on the same chunks). Throws kInvalidArgument
// when the text has fewer than 2 * n_ctx tokens (llama-perplexity's requirement), n_ctx is below
// kMinPerplexityCtx or exceeds the model's context, or max_chunks is 0.
PerplexityResult perplexity(Qwen2Model& model, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& opt, Qwen2Model* base = nullptr);

}  // namespace nnpipe
