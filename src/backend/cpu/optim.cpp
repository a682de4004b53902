// Optimizer, gradient and dropout ops: axpy, scale, sq_norm, adamw_step, dropout_mask. Each is
// element-wise or summed in fixed chunks, so every thread count gives the same bits (a resumed
// run reproduces the uninterrupted one).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;  // elements per parallel chunk

int64_t chunks_of(int64_t n) {
  return (n + kChunk - 1) / kChunk;
}

// One AdamW update of n elements (AdamWConsts in backend/optim.h gives the order). Compiled for
// AVX-512, AVX2+FMA and baseline x86-64 and picked at load time: std::fma is exactly rounded
// everywhere, so every version gives the same bits; without the clones each fma is a libm call
// (17% of a 0.5B full step).
__attribute__((target_clones("avx512f", "arch=haswell", "default"))) void adamw_kernel(
    float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
    int64_t n, const AdamWConsts& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i];
    if (k.decay != 1.0f) pi = pi * k.decay;
    // torch's vectorised lerp: fmadd(coeff, end - start, base).
    const float mi =
        k.small_w1 ? std::fma(k.w1, gi - m[i], m[i]) : std::fma(k.w1 - 1.0f, gi - m[i], gi);
    // addcmul (torch CPU kernel, checked bit for bit): fma(value * t1, t2, self).
    const float vi = std::fma(k.w2 * gi, gi, v[i] * k.b2);
    // torch's CPU sqrt (MKL/Sleef) is not always correctly rounded (1 ulp off for ~0.6% of
    // inputs on AVX512 builds); ours is IEEE, so results agree to about an ulp, not bit for bit.
    const float denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
    // addcdiv (torch CPU kernel, checked bit for bit): self + (value * t1) / t2.
    p[i] = pi + (k.neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void CpuBackend::axpy(Tensor& y, float a, const Tensor& x) {
  same_shape(y, x, "axpy");
  float* d = f32(y, "axpy y");
  const float* s = f32(x, "axpy x");
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (int64_t i = 0; i < n; ++i) d[i] += a * s[i];
}

void CpuBackend::scale(Tensor& x, float a) {
  float* d = f32(x, "scale x");
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (int64_t i = 0; i < n; ++i) d[i] *= a;
}

double CpuBackend::sq_norm(const Tensor& x) {
  static_assert(kChunk == kSqNormChunk);
  const float* g = f32(x, "sq_norm x");
  const int64_t n = x.numel(), chunks = chunks_of(n);
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) s += static_cast<double>(g[i]) * g[i];
    part[static_cast<size_t>(c)] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return s;
}

void CpuBackend::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                            const AdamWStep& s) {
  same_shape(param, grad, "adamw_step grad");
  same_shape(param, exp_avg, "adamw_step exp_avg");
  same_shape(param, exp_avg_sq, "adamw_step exp_avg_sq");
  if (s.step < 1) fail(ErrorCode::kInvalidArgument, "adamw_step: step {} (must be >= 1)", s.step);
  const AdamWConsts k = adamw_consts(s);
  float* p = f32(param, "adamw_step param");
  const float* g = f32(grad, "adamw_step grad");
  float* m = f32(exp_avg, "adamw_step exp_avg");
  float* v = f32(exp_avg_sq, "adamw_step exp_avg_sq");
  const int64_t n = param.numel(), chunks = chunks_of(n);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    adamw_kernel(p + b, g + b, m + b, v + b, e - b, k);
  }
}

void CpuBackend::dropout_mask(Tensor& keep, double p, uint64_t seed, uint64_t offset) {
  if (keep.dtype() != DType::kU8 || keep.device() != Device::kCPU)
    fail(ErrorCode::kInvalidArgument, "dropout_mask: expected a CPU u8 tensor, got {}",
         keep.describe());
  if (!(p >= 0 && p <= 1))
    fail(ErrorCode::kInvalidArgument, "dropout_mask: probability {} is not in [0, 1]", p);
  uint8_t* k = keep.raw();
  const uint64_t threshold = dropout_threshold(p);
  const int64_t n = keep.numel();
#pragma omp parallel for schedule(static) if (n > kChunk)
  for (int64_t i = 0; i < n; ++i)
    k[i] = dropout_keep(threshold, seed, offset + static_cast<uint64_t>(i));
}

}  // namespace nnpipe::cpu
