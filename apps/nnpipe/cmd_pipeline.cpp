// nnpipe pipeline: the whole demo chain on the embedded default model and data.
#include <iostream>

#include "command.h"
#include "core/log.h"
#include "pipeline/pipeline.h"
#include "pipeline/pipeline_report.h"
#include "pipeline/session.h"

namespace {

NNPIPE_COMMAND(
    "pipeline", "Run the demo pipeline on the embedded tiny model and sample data (no downloads)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto o = std::make_shared<nnpipe::PipelineOptions>();
      o->runs_dir = nnpipe::default_runs_dir();
      auto model = std::make_shared<std::string>();
      auto data = std::make_shared<std::string>();
      auto session = std::make_shared<std::string>();
      CLI::Option* session_opt =
          app.add_option("--session", *session, "Session id (default: pipeline-<UTC time>)");
      app.add_option("--runs-dir", o->runs_dir,
                     "Runs folder (default: $NNPIPE_RUNS_DIR or ./runs)");
      app.add_option("--model", *model, "Use this HF model directory instead of a new tiny model");
      app.add_option("--data", *data,
                     "Use this dataset (JSON or JSONL) instead of the embedded sample");
      app.add_option("--seed", o->seed, "Seed of the tiny model's random weights (default 0)");
      app.add_option("--max-seq-len", o->max_seq_len,
                     "Truncate conversations to this many tokens (default 512)");
      app.add_option("--epochs", o->epochs, "Epochs of each fine-tuning step (default 60)")
          ->check(CLI::Range(int64_t{1}, int64_t{100000}));
      app.add_option("--pretrain-epochs", o->pretrain_epochs,
                     "Epochs of the new tiny model's pre-training on the embedded text "
                     "(default 45; 0: fine-tune the random model as it is)")
          ->check(CLI::Range(int64_t{0}, int64_t{100000}));
      app.add_option("--threads", o->threads,
                     "Compute threads (default: 1 for the embedded tiny model, whose matrices are "
                     "too small for threads to pay; all cores with --model)")
          ->check(CLI::Range(1, 1024));
      auto no_train = std::make_shared<bool>(false);
      auto no_progress = std::make_shared<bool>(false);
      app.add_flag("--no-train", *no_train, "Stop after preparing the data (no fine-tuning)");
      app.add_flag("--no-progress", *no_progress, "No progress bars");
      return [=] {
        o->train = !*no_train;
        o->progress = !*no_progress;
        if (session_opt->count()) o->session_id = *session;
        if (!model->empty()) o->model = *model;
        if (!data->empty()) o->dataset = *data;
        nnpipe::PipelineResult r = nnpipe::run_pipeline(*o);
        std::error_code ec;
        nnpipe::fs::path self = nnpipe::fs::read_symlink("/proc/self/exe", ec);
        std::cout << nnpipe::format_pipeline_report(r, ec ? "nnpipe" : self.string());
        return 0;
      };
    });

}  // namespace
