// Arguments and exact definitions of the optimizer and dropout ops (Backend::adamw_step,
// sq_norm, dropout_mask). Every backend derives its constants and random bits with these inline
// functions, so a CPU and a GPU step give the same AdamW constants and draw the same dropout masks.
#pragma once
#include <cmath>
#include <cstdint>

namespace nnpipe {

// sq_norm's chunk: partial sums over [c * kSqNormChunk, (c + 1) * kSqNormChunk), added in order.
inline constexpr int64_t kSqNormChunk = int64_t{1} << 16;

// One AdamW update (torch.optim.AdamW, foreach=False). Python scalars are doubles; torch casts
// them to float when applied to a float tensor, hence the float constants below.
struct AdamWHyper {  // torch.optim.AdamW's defaults
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};
struct AdamWStep : AdamWHyper {
  int64_t step = 1;  // this update's number (1-based): the bias corrections use it
};

// Per element, in this order (f32, std::fma exactly rounded):
//   p = decay != 1 ? p * decay : p
//   m = small_w1 ? fma(w1, g - m, m) : fma(w1 - 1, g - m, g)     (torch's vectorised lerp)
//   v = fma(w2 * g, g, v * b2)                                    (addcmul)
//   p = p + (neg_step_size * m) / (sqrt(v) / bc2_sqrt + eps)      (addcdiv)
struct AdamWConsts {
  float decay, w1, b2, w2, neg_step_size, bc2_sqrt, eps;
  bool small_w1;
};

inline AdamWConsts adamw_consts(const AdamWStep& s) {
  AdamWConsts k;
  k.decay = s.weight_decay != 0 ? static_cast<float>(1.0 - s.lr * s.weight_decay) : 1.0f;
  k.w1 = static_cast<float>(1.0 - s.beta1);
  k.b2 = static_cast<float>(s.beta2);
  k.w2 = static_cast<float>(1.0 - s.beta2);
  const double step = static_cast<double>(s.step);
  const double bc1 = 1.0 - std::pow(s.beta1, step);
  const double bc2 = 1.0 - std::pow(s.beta2, step);
  k.neg_step_size = static_cast<float>(-(s.lr / bc1));
  k.bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));
  k.eps = static_cast<float>(s.eps);
  k.small_w1 = std::fabs(k.w1) < 0.5f;
  return k;
}

// --- dropout: a counter-based RNG (no state but (seed, counter)) ---
// SplitMix64's finaliser (Steele, Lea, Flood 2014), a bijection of 64-bit words.
constexpr uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// The random word of `counter` in stream `seed`: output number counter+1 of a SplitMix64
// generator whose state starts at splitmix64_mix(seed).
constexpr uint64_t dropout_bits(uint64_t seed, uint64_t counter) {
  return splitmix64_mix(splitmix64_mix(seed) + (counter + 1) * 0x9e3779b97f4a7c15ull);
}
// An element is dropped iff u < p for u = (bits >> 11) * 2^-53 uniform in [0, 1); in integers
// (no floating point on the device): (bits >> 11) < ceil(p * 2^53).
inline uint64_t dropout_threshold(double p) {
  return static_cast<uint64_t>(std::ceil(p * 0x1p53));
}
constexpr uint8_t dropout_keep(uint64_t threshold, uint64_t seed, uint64_t counter) {
  return (dropout_bits(seed, counter) >> 11) >= threshold ? 1 : 0;
}

}  // namespace nnpipe
