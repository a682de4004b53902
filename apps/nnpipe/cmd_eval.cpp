// nnpipe eval --ppl FILE: perplexity of a model (HF directory or GGUF file) on a text file, the way
// llama-perplexity computes it, optionally with KL divergence and top-1 agreement against a base
// model (e.g. a quantized GGUF against its F16 export).
#include <chrono>
#include <iostream>
#include <limits>

#include "cli_checks.h"
#include "command.h"
#include "core/error.h"
#include "core/file.h"
#include "core/json.h"
#include "core/sysinfo.h"
#include "engine/context.h"
#include "eval/perplexity.h"
#include "train/progress.h"

namespace {

struct EvalArgs {
  std::string model, ppl, kl_base;
  int64_t ctx = 128, chunks = -1;
  int threads = 0;
  bool as_json = false, no_progress = false;
};

int run_eval(const EvalArgs& a) {
  using namespace nnpipe;
  // Checked before anything loads (CLI11 checks the flags too): --ctx 0 used to divide by zero.
  if (a.ctx < kMinPerplexityCtx)
    fail(ErrorCode::kInvalidArgument, "--ctx {}: must be at least {}", a.ctx, kMinPerplexityCtx);
  if (a.chunks == 0 || a.chunks < -1)
    fail(ErrorCode::kInvalidArgument, "--chunks {}: must be >= 1 (default: every chunk)", a.chunks);
  set_num_threads(a.threads);
  if (a.ppl.empty()) fail(ErrorCode::kInvalidArgument, "eval: give --ppl FILE (a text file)");
  const std::string text = read_file(a.ppl);
  EvalModel m = load_eval_model(a.model);
  std::optional<EvalModel> base;
  if (!a.kl_base.empty()) base.emplace(load_eval_model(a.kl_base));
  const std::vector<int32_t> tokens = m.tokenizer.encode(text);
  if (base && base->tokenizer.encode(text) != tokens)
    fail(ErrorCode::kInvalidArgument, "eval: {} and {} tokenize {} differently", a.model, a.kl_base,
         a.ppl);

  // The policy of infer -c: above the model's context length, capped to it with a warning.
  ModelConfig limit = m.model.config();
  if (base)
    limit.max_position_embeddings =
        std::min(limit.max_position_embeddings, base->model.config().max_position_embeddings);
  const int64_t ctx = engine::context_size_for(limit, a.ctx, "--ctx");

  const auto t0 = std::chrono::steady_clock::now();
  PerplexityOptions opt;
  opt.n_ctx = ctx;
  opt.max_chunks = a.chunks;
  const int64_t total =
      a.chunks < 0 ? static_cast<int64_t>(tokens.size()) / ctx
                   : std::min<int64_t>(a.chunks, static_cast<int64_t>(tokens.size()) / ctx);
  ProgressBar bar("eval", 0, total, !a.no_progress && !a.as_json);
  opt.progress = [&](int64_t done, int64_t) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bar.update(done, -1, 0, -1, s > 0 ? static_cast<double>(done * ctx) / s : 0);
  };
  PerplexityResult r = perplexity(m.model, tokens, opt, base ? &base->model : nullptr);
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  ordered_json j = {{"model", a.model},   {"text", a.ppl},      {"ctx", ctx},
                    {"tokens", r.tokens}, {"chunks", r.chunks}, {"scored", r.scored},
                    {"nll", r.nll},       {"ppl", r.ppl},       {"ppl_stderr", r.ppl_stderr},
                    {"seconds", secs}};
  if (r.has_base) {
    j["kl_base"] = a.kl_base;
    j["base_ppl"] = r.base_ppl;
    j["kl_mean"] = r.kl_mean;
    j["kl_max"] = r.kl_max;
    j["top1_agree"] = r.top1_agree;
  }
  if (a.as_json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << fmt::format("PPL = {:.4f} +/- {:.4f} over {} positions ({} chunks of {})\n", r.ppl,
                             r.ppl_stderr, r.scored, r.chunks, ctx);
    if (r.has_base)
      std::cout << fmt::format(
          "vs {}: base PPL {:.4f}, mean KL {:.6f}, max KL {:.6f}, top-1 agreement {:.2f}%\n",
          a.kl_base, r.base_ppl, r.kl_mean, r.kl_max, 100 * r.top1_agree);
  }
  return 0;
}

NNPIPE_COMMAND(
    "eval", "Perplexity of a model (HF dir or GGUF) on a text file, optionally KL vs a base model",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<EvalArgs>();
      app.add_option("--model", a->model, "HF model directory or .gguf file")->required();
      app.add_option("--ppl", a->ppl, "Text file to compute perplexity on")->required();
      const int64_t kMax = std::numeric_limits<int64_t>::max();
      app.add_option("--ctx", a->ctx,
                     "Chunk length in tokens; the second half of each chunk is scored "
                     "(llama-perplexity's method). Default 128, at least 4; a larger value than "
                     "the model's context length is capped to it, with a warning, as infer -c is")
          ->check(nnpipe::cli::int_in(nnpipe::kMinPerplexityCtx, kMax));
      app.add_option("--chunks", a->chunks, "Evaluate at most this many chunks (default: all)")
          ->check(nnpipe::cli::int_in(1, kMax));
      app.add_option("--kl-base", a->kl_base,
                     "Base model (HF dir or GGUF) for KL divergence and top-1 agreement");
      app.add_option("--threads", a->threads, "Compute threads (0: every core)")
          ->check(nnpipe::cli::threads_in());
      app.add_flag("--json", a->as_json, "Print the result as JSON");
      app.add_flag("--no-progress", a->no_progress, "No progress bar");
      return [a] { return run_eval(*a); };
    });

}  // namespace
