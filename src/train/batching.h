// How a training run walks its data: epochs of (optionally shuffled) example orders, micro-batches
// of batch_size examples, optimizer steps of gradient_accumulation_steps micro-batches. Everything
// is a pure function of (seed, step), so a resumed run recomputes the exact order it was in.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/qwen2.h"
#include "train/dataset.h"

namespace nnpipe {

struct TrainSchedule {
  int64_t num_examples = 0;
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  int64_t num_epochs = 1;
  int64_t max_steps = -1;  // > 0 overrides num_epochs (more epochs are run if needed)
  uint64_t seed = 0;
  bool shuffle = true;

  int64_t micro_batches_per_epoch() const;  // ceil(examples / batch_size)
  // ceil(micro-batches / grad_accum): an epoch's last step may hold fewer micro-batches, like the
  // HF Trainer.
  int64_t steps_per_epoch() const;
  int64_t total_steps() const;
};

// The example order of `epoch`: 0..n-1, or a Fisher-Yates shuffle seeded by (seed, epoch).
std::vector<size_t> epoch_order(size_t n, uint64_t seed, int64_t epoch, bool shuffle);

struct StepPlan {
  int64_t epoch = 0;
  std::vector<std::vector<size_t>> micro_batches;  // example indices
};
// The micro-batches of optimizer step `step` (0-based).
StepPlan plan_step(const TrainSchedule& s, int64_t step);

// Right-padded batch of examples[idx...] (pad id 0, label -100, lengths set).
Qwen2Batch collate(const std::vector<Example>& examples, std::span<const size_t> idx);
// Number of shifted targets that count in the loss (labels[t + 1] != -100 within each row).
int64_t count_loss_tokens(const Qwen2Batch& b);

}  // namespace nnpipe
