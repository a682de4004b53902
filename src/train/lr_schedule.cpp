#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace nnpipe {

std::optional<LrSchedule> lr_schedule_from_name(std::string_view name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  return std::nullopt;
}

std::string_view lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::kConstant:
      return "constant";
    case LrSchedule::kLinear:
      return "linear";
    case LrSchedule::kCosine:
      return "cosine";
  }
  return "?";
}

double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup, int64_t total) {
  const double cur = static_cast<double>(step);
  if (step < warmup) {
    // constant: max(1.0, warmup); linear/cosine: max(1, warmup) -- the same value.
    return cur / std::max(1.0, static_cast<double>(warmup));
  }
  switch (s) {
    case LrSchedule::kConstant:
      return 1.0;
    case LrSchedule::kLinear:
      return std::max(0.0, static_cast<double>(total - step) /
                               static_cast<double>(std::max<int64_t>(1, total - warmup)));
    case LrSchedule::kCosine: {
      const double progress = static_cast<double>(step - warmup) /
                              static_cast<double>(std::max<int64_t>(1, total - warmup));
      const double num_cycles = 0.5;
      double factor = 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress));
      factor = factor * (1 - 0.0) + 0.0;
      return std::max(0.0, factor);
    }
  }
  return 1.0;
}

}  // namespace nnpipe
