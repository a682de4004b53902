// Trainer checkpoints: <step_dir>/checkpoints/checkpoint-<step>/ with the trainable weights
// (full: model.safetensors of f32 master weights; LoRA: adapter/ as a PEFT directory),
// optimizer.safetensors (AdamW moments and steps) and trainer_state.json (step, counters, dropout
// RNG seed and counter, the run's parameters and a fingerprint of its data). A checkpoint is built
// in a staging directory and renamed into place, so a kill -9 at any moment leaves either the
// previous checkpoint or the new one, never half of one.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "core/file.h"
#include "core/json.h"
#include "core/rng.h"
#include "train/adamw.h"

namespace nnpipe {

struct TrainerState {
  std::string mode;  // "full" | "lora"
  int64_t step = 0;  // optimizer steps completed
  int64_t total_steps = 0;
  int64_t tokens = 0;          // input tokens seen
  int64_t trained_tokens = 0;  // loss tokens seen
  double elapsed_s = 0;        // training wall time before this run (resumes add up)
  double timed_s = 0;          // wall time of steps after warm-up (tokens/s excludes warm-up)
  int64_t timed_tokens = 0;
  double last_loss = 0;
  CounterRng rng{};  // LoRA dropout stream: (seed, counter)
  json params;       // the run's parameters: a resume must use the same
  std::string data_fingerprint;
  int world_size = 1;  // data-parallel ranks: part of the schedule (each step's micro-batches)

  json to_json() const;
  static TrainerState from_json(const json& j, const std::string& origin);
};

fs::path checkpoints_dir(const fs::path& step_dir);
// The newest complete checkpoint (highest step), if any.
std::optional<fs::path> latest_checkpoint(const fs::path& step_dir);

// Writes checkpoint-<state.step> atomically: `write_weights(dir)` adds the weights to the staging
// directory. Then removes all but the newest `keep` checkpoints.
void save_checkpoint(const fs::path& step_dir, const TrainerState& state, const AdamW& opt,
                     const std::function<void(const fs::path&)>& write_weights, int keep = 2);

TrainerState load_trainer_state(const fs::path& checkpoint);

// A 64-bit FNV-1a fingerprint (hex) of token sequences, to detect a resume on other data.
std::string fingerprint_tokens(const std::vector<std::vector<int32_t>>& seqs);

}  // namespace nnpipe
