#include "train/batching.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace nnpipe {

int64_t TrainSchedule::micro_batches_per_epoch() const {
  return (num_examples + batch_size - 1) / batch_size;
}

int64_t TrainSchedule::steps_per_epoch() const {
  return (micro_batches_per_epoch() + grad_accum - 1) / grad_accum;
}

int64_t TrainSchedule::total_steps() const {
  return max_steps > 0 ? max_steps : steps_per_epoch() * num_epochs;
}

std::vector<size_t> epoch_order(size_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  if (!shuffle) return order;
  // A fresh stream per epoch: the order never depends on how many numbers earlier epochs drew.
  Rng rng(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

StepPlan plan_step(const TrainSchedule& s, int64_t step) {
  if (s.num_examples <= 0) fail(ErrorCode::kInvalidArgument, "training: no examples");
  const int64_t spe = s.steps_per_epoch(), mbe = s.micro_batches_per_epoch();
  StepPlan plan;
  plan.epoch = step / spe;
  const int64_t k = step % spe;
  const std::vector<size_t> order =
      epoch_order(static_cast<size_t>(s.num_examples), s.seed, plan.epoch, s.shuffle);
  for (int64_t mb = k * s.grad_accum; mb < std::min(mbe, (k + 1) * s.grad_accum); ++mb) {
    const int64_t begin = mb * s.batch_size, end = std::min(s.num_examples, begin + s.batch_size);
    plan.micro_batches.emplace_back(order.begin() + begin, order.begin() + end);
  }
  return plan;
}

Qwen2Batch collate(const std::vector<Example>& examples, std::span<const size_t> idx) {
  Qwen2Batch b;
  b.batch = static_cast<int64_t>(idx.size());
  for (size_t i : idx) b.seq = std::max<int64_t>(b.seq, examples.at(i).input_ids.size());
  const size_t t = static_cast<size_t>(b.seq);
  b.input_ids.assign(idx.size() * t, 0);  // (B, T)
  b.labels.assign(idx.size() * t, kIgnoreIndex);
  for (size_t r = 0; r < idx.size(); ++r) {
    const Example& ex = examples.at(idx[r]);
    std::copy(ex.input_ids.begin(), ex.input_ids.end(), b.input_ids.begin() + r * t);
    std::copy(ex.labels.begin(), ex.labels.end(), b.labels.begin() + r * t);
    b.lengths.push_back(static_cast<int32_t>(ex.input_ids.size()));
  }
  return b;
}

int64_t count_loss_tokens(const Qwen2Batch& b) {
  int64_t n = 0;
  for (int64_t r = 0; r < b.batch; ++r)
    for (int64_t i = 1; i < b.seq; ++i)
      if (b.labels[r * b.seq + i] != kIgnoreIndex) ++n;
  return n;
}

}  // namespace nnpipe
