// Learning-rate schedules with linear warmup, exactly like transformers'
// get_{constant,linear,cosine}_schedule_with_warmup (cosine: num_cycles 0.5, min_lr_rate 0).
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace nnpipe {

enum class LrSchedule { kConstant, kLinear, kCosine };

std::optional<LrSchedule> lr_schedule_from_name(std::string_view name);  // "constant", ...
std::string_view lr_schedule_name(LrSchedule s);

// The multiplier of the base learning rate at optimizer step `step` (0-based: the value LambdaLR
// applies before the first optimizer.step() is multiplier(0)). `total_steps` is ignored by
// kConstant.
double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace nnpipe
