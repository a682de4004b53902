#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "core/error.h"

namespace nnpipe::engine {

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  return best;
}

void validate(const SamplingParams& p) {
  auto check = [](bool ok, const char* key, auto value, const char* what) {
    if (!ok) fail(ErrorCode::kInvalidArgument, "sampling: {} {}: must be {}", key, value, what);
  };
  using L = SamplingLimits;
  auto in = [](float x, float lo, float hi) { return std::isfinite(x) && x >= lo && x <= hi; };
  check(in(p.temperature, 0, L::kMaxTemperature), "temperature", p.temperature,
        "a finite number in [0, 100] (0: greedy)");
  check(p.top_k >= 0, "top_k", p.top_k, ">= 0 (0: off)");
  check(in(p.top_p, 0, 1), "top_p", p.top_p, "a finite number in [0, 1] (1: off)");
  check(in(p.min_p, 0, 1), "min_p", p.min_p, "a finite number in [0, 1] (0: off)");
  check(in(p.repeat_penalty, 0, L::kMaxPenalty) && p.repeat_penalty > 0, "repeat_penalty",
        p.repeat_penalty, "a finite number in (0, 100] (1: off)");
  check(in(p.presence_penalty, -L::kMaxPenalty, L::kMaxPenalty), "presence_penalty",
        p.presence_penalty, "a finite number in [-100, 100] (0: off)");
  check(in(p.frequency_penalty, -L::kMaxPenalty, L::kMaxPenalty), "frequency_penalty",
        p.frequency_penalty, "a finite number in [-100, 100] (0: off)");
  check(p.penalty_last_n >= -1, "penalty_last_n", p.penalty_last_n, ">= -1 (-1: all, 0: off)");
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(static_cast<uint32_t>(p.seed)) {
  validate(p_);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const bool penalize =
      p_.penalty_last_n != 0 &&
      (p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f);
  std::span<const float> l = logits;
  if (penalize) {
    work_.assign(logits.begin(), logits.end());
    const size_t n = p_.penalty_last_n < 0
                         ? history.size()
                         : std::min(history.size(), static_cast<size_t>(p_.penalty_last_n));
    std::unordered_map<int32_t, int> count;
    for (size_t i = history.size() - n; i < history.size(); ++i) ++count[history[i]];
    for (auto [id, c] : count) {
      if (id < 0 || static_cast<size_t>(id) >= work_.size()) continue;
      float& x = work_[static_cast<size_t>(id)];
      x = x > 0 ? x / p_.repeat_penalty : x * p_.repeat_penalty;
      x -= static_cast<float>(c) * p_.frequency_penalty + p_.presence_penalty;
    }
    l = work_;
  }
  if (p_.temperature <= 0.0f) return argmax(l);

  cand_.resize(l.size());
  for (size_t i = 0; i < l.size(); ++i) cand_[i] = {static_cast<int32_t>(i), l[i]};
  auto by_logit = [](const Cand& a, const Cand& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t k = cand_.size();
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < k) k = static_cast<size_t>(p_.top_k);
  std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(),
                    by_logit);
  cand_.resize(k);
  // softmax over the kept candidates (sorted, so cand_[0] is the max)
  std::vector<float> prob(k);
  auto softmax = [&](size_t m) {
    double sum = 0;
    for (size_t i = 0; i < m; ++i) sum += prob[i] = std::exp(cand_[i].logit - cand_[0].logit);
    for (size_t i = 0; i < m; ++i) prob[i] = static_cast<float>(prob[i] / sum);
  };
  softmax(k);
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t m = 0;
    while (m < k) {
      cum += prob[m++];
      if (cum >= p_.top_p) break;
    }
    k = std::max<size_t>(1, m);
  }
  if (p_.min_p > 0.0f) {
    size_t m = 1;
    while (m < k && prob[m] >= p_.min_p * prob[0]) ++m;
    k = m;
  }
  cand_.resize(k);
  for (Cand& c : cand_) c.logit /= p_.temperature;
  softmax(k);
  std::discrete_distribution<size_t> dist(prob.begin(),
                                          prob.begin() + static_cast<std::ptrdiff_t>(k));
  return cand_[dist(rng_)].id;
}

}  // namespace nnpipe::engine
