#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/gguf.h"
#include "model/gguf_model.h"

namespace nnpipe {
namespace {

// log-softmax of one row of logits into `out` (V), in double for the sums.
void log_softmax(const float* logits, int64_t v, std::vector<double>& out) {
  out.resize(static_cast<size_t>(v));
  const float mx = *std::max_element(logits, logits + v);
  double sum = 0;
  for (int64_t i = 0; i < v; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  const double lse = std::log(sum) + mx;
  for (int64_t i = 0; i < v; ++i) out[i] = logits[i] - lse;
}

// Runs one chunk; returns a pointer to its logits (1, T, V).
const float* run_chunk(Qwen2Model& m, const int32_t* ids, int64_t n_ctx) {
  Qwen2Batch b;
  b.batch = 1;
  b.seq = n_ctx;
  b.input_ids.assign(ids, ids + n_ctx);
  m.forward(b);
  return reinterpret_cast<const float*>(m.logits().raw());
}

}  // namespace

EvalModel load_eval_model(const fs::path& path) {
  if (is_gguf_file(path)) {
    const GgufFile f = GgufFile::open(path);
    ChatAssets assets = chat_assets_from_gguf(f);
    return {load_qwen2_gguf(f), std::move(assets.tokenizer), "gguf"};
  }
  if (!fs::is_directory(path))
    fail(ErrorCode::kNotFound, "{}: neither a model directory nor a GGUF file", path.string());
  Tokenizer tok = Tokenizer::from_file(path / "tokenizer.json");
  return {Qwen2Model::load(path, cpu_backend()), std::move(tok), "hf"};
}

PerplexityResult perplexity(Qwen2Model& model, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& opt, Qwen2Model* base) {
  const int64_t n_ctx = opt.n_ctx;
  if (n_ctx < kMinPerplexityCtx)
    fail(ErrorCode::kInvalidArgument, "perplexity: context {} is too small (at least {})", n_ctx,
         kMinPerplexityCtx);
  if (opt.max_chunks == 0)
    fail(ErrorCode::kInvalidArgument, "perplexity: max_chunks 0 scores nothing (< 0: every chunk)");
  if (n_ctx > model.config().max_position_embeddings)
    fail(ErrorCode::kInvalidArgument, "perplexity: context {} exceeds the model's {}", n_ctx,
         model.config().max_position_embeddings);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2 * n_ctx)
    fail(ErrorCode::kInvalidArgument,
         "perplexity: the text has {} tokens; a context of {} needs at least {} (use a longer "
         "text or a smaller --ctx)",
         n, n_ctx, 2 * n_ctx);
  if (base && base->config().vocab_size != model.config().vocab_size)
    fail(ErrorCode::kInvalidArgument, "perplexity: the base model's vocabulary ({}) differs ({})",
         base->config().vocab_size, model.config().vocab_size);
  model.set_training(false, nullptr);
  if (base) base->set_training(false, nullptr);

  PerplexityResult r;
  r.tokens = n;
  r.has_base = base != nullptr;
  const int64_t total = opt.max_chunks < 0 ? n / n_ctx : std::min(opt.max_chunks, n / n_ctx);
  const int64_t first = n_ctx / 2;
  const int64_t v = model.config().vocab_size;
  double nll = 0, nll2 = 0, base_nll = 0, kl = 0;
  int64_t agree = 0;
  std::vector<double> lp, lq;
  for (int64_t c = 0; c < total; ++c) {
    const int32_t* ids = tokens.data() + c * n_ctx;
    const float* logits = run_chunk(model, ids, n_ctx);  // (1, n_ctx, V)
    std::vector<float> base_logits;
    if (base) {
      const float* bl = run_chunk(*base, ids, n_ctx);
      base_logits.assign(bl + first * v, bl + (n_ctx - 1) * v);
    }
    for (int64_t j = first; j < n_ctx - 1; ++j) {
      const float* row = logits + j * v;
      log_softmax(row, v, lq);
      const double l = -lq[ids[j + 1]];
      nll += l;
      nll2 += l * l;
      if (base) {
        const float* brow = base_logits.data() + (j - first) * v;
        log_softmax(brow, v, lp);
        base_nll += -lp[ids[j + 1]];
        double k = 0;
        for (int64_t i = 0; i < v; ++i) k += std::exp(lp[i]) * (lp[i] - lq[i]);
        kl += k;
        r.kl_max = std::max(r.kl_max, k);
        agree += std::max_element(row, row + v) - row == std::max_element(brow, brow + v) - brow;
      }
      ++r.scored;
    }
    r.chunks = c + 1;
    if (opt.progress) opt.progress(c + 1, total);
  }
  const double cnt = static_cast<double>(r.scored);
  r.nll = nll / cnt;
  r.ppl = std::exp(r.nll);
  const double var = nll2 / cnt - r.nll * r.nll;
  r.ppl_stderr = cnt > 1 ? r.ppl * std::sqrt(std::max(0.0, var) / (cnt - 1)) : 0;
  if (base) {
    r.kl_mean = kl / cnt;
    r.top1_agree = static_cast<double>(agree) / cnt;
    r.base_ppl = std::exp(base_nll / cnt);
  }
  return r;
}

}  // namespace nnpipe
