// `nnpipe pipeline`: the demo chain on the embedded default model and data, one session, one
// step folder per step. Issue by issue it grows to fine-tune, quantize, export and infer.
#pragma once
#include <optional>
#include <string>

#include "core/json.h"

namespace nnpipe {

struct PipelineOptions {
  std::optional<std::string> session_id;  // unset: "pipeline-<UTC timestamp>"
  fs::path runs_dir = "runs";
  std::optional<fs::path> model;    // unset: init a tiny model with the default tokenizer
  std::optional<fs::path> dataset;  // unset: the embedded sample dataset
  uint64_t seed = 0;
  size_t max_seq_len = 512;
  bool train = true;             // false: stop after render_chat
  int64_t epochs = 60;           // of each fine-tuning step
  int64_t pretrain_epochs = 45;  // of the pre-training of the new tiny model (0: none)
  bool progress = true;          // progress bars on the console
  // Compute threads; 0: one for the new tiny model (its matrices are too small for threads to
  // pay, and a second thread doubles the time on a busy machine), all cores for a given model.
  int threads = 0;
};

struct PipelineResult {
  std::string session_id;
  fs::path session_dir;
  json steps = json::array();  // the summaries
};

// Runs every step; a failing step is recorded in its summary.json and rethrown.
PipelineResult run_pipeline(const PipelineOptions& opt);

}  // namespace nnpipe
