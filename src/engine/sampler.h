// Token sampling in llama.cpp's order: repetition/presence/frequency penalties over the last N
// tokens, top-k, top-p, min-p, temperature, then a seeded draw (greedy when temperature <= 0).
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace nnpipe::engine {

struct SamplingParams {
  float temperature = 0.0f;        // 0: greedy (argmax)
  int top_k = 40;                  // 0: off
  float top_p = 0.95f;             // 1: off
  float min_p = 0.05f;             // 0: off
  float repeat_penalty = 1.0f;     // 1: off
  float presence_penalty = 0.0f;   // 0: off
  float frequency_penalty = 0.0f;  // 0: off
  int penalty_last_n = 64;         // tokens the penalties look at (0: off, -1: all)
  uint64_t seed = 0;
};

// The accepted ranges (the CLI checks its flags against the same numbers). Every float must be
// finite: NaN or inf logits would make every draw token 0.
struct SamplingLimits {
  static constexpr float kMaxTemperature = 100.0f;  // [0, 100]
  static constexpr float kMaxPenalty = 100.0f;  // repeat (0, 100], presence/frequency [-100, 100]
};

// Throws kInvalidArgument "sampling: <key> <value>: must be ..." for the first value out of range.
void validate(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Chooses the next token from logits (V); `history` is the sequence so far (prompt + output),
  // the penalties use its last penalty_last_n tokens.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  std::mt19937 rng_;
  std::vector<float> work_;
  struct Cand {
    int32_t id;
    float logit;
  };
  std::vector<Cand> cand_;
};

// The first index of the largest value (ties: the lowest id, like llama.cpp's greedy sampler).
int32_t argmax(std::span<const float> logits);

}  // namespace nnpipe::engine
