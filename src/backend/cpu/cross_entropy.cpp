// Cross-entropy over logits with ignore_index -100, mean over the non-ignored targets (torch's
// F.cross_entropy(reduction="mean")). Log-sum-exp per row in double so the mean is not the weak
// link.
#include <cmath>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {
namespace {

struct Rows {
  int64_t n, v;
  const float* logits;
  const int32_t* targets;
};

Rows rows(const Tensor& logits, const Tensor& targets) {
  if (logits.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "cross_entropy: logits {} not (N, V)", logits.describe());
  const int64_t n = logits.dim(0), v = logits.dim(1);
  check_tensor(targets, DType::kI32, {n}, "cross_entropy targets");
  Rows r{n, v, f32(logits, "logits"), i32(targets, "targets")};
  for (int64_t i = 0; i < n; ++i)
    if (r.targets[i] != kIgnoreIndex && (r.targets[i] < 0 || r.targets[i] >= v))
      fail(ErrorCode::kInvalidArgument, "cross_entropy: target {} out of range [0, {})",
           r.targets[i], v);
  return r;
}

double log_sum_exp(const float* x, int64_t v) {
  float mx = x[0];
  for (int64_t j = 1; j < v; ++j) mx = std::max(mx, x[j]);
  double s = 0;
  for (int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(x[j]) - mx);
  return mx + std::log(s);
}

int64_t count_targets(const Rows& r) {
  int64_t c = 0;
  for (int64_t i = 0; i < r.n; ++i) c += r.targets[i] != kIgnoreIndex;
  return c;
}

}  // namespace

void CpuBackend::cross_entropy(Tensor& loss, const Tensor& logits, const Tensor& targets) {
  check_tensor(loss, DType::kF64, {2}, "cross_entropy loss");
  const Rows r = rows(logits, targets);
  const int64_t c = count_targets(r);
  double sum = 0;
#pragma omp parallel for reduction(+ : sum) if (r.n * r.v >= kParallelMin)
  for (int64_t i = 0; i < r.n; ++i) {
    if (r.targets[i] == kIgnoreIndex) continue;
    const float* x = r.logits + i * r.v;  // (V)
    sum += log_sum_exp(x, r.v) - x[r.targets[i]];
  }
  double* out = reinterpret_cast<double*>(loss.raw());
  out[0] = c ? sum / static_cast<double>(c) : 0.0;
  out[1] = static_cast<double>(c);
}

void CpuBackend::cross_entropy_backward(Tensor& dlogits, const Tensor& logits,
                                        const Tensor& targets, float dloss) {
  const Rows r = rows(logits, targets);
  same_shape(dlogits, logits, "cross_entropy_backward dlogits");
  float* d = f32(dlogits, "dlogits");
  const int64_t c = count_targets(r);
  if (c == 0) return;
  const double k = static_cast<double>(dloss) / static_cast<double>(c);
#pragma omp parallel for if (r.n * r.v >= kParallelMin)
  for (int64_t i = 0; i < r.n; ++i) {
    if (r.targets[i] == kIgnoreIndex) continue;
    const float* x = r.logits + i * r.v;
    float* di = d + i * r.v;
    const double lse = log_sum_exp(x, r.v);
    for (int64_t j = 0; j < r.v; ++j) {
      const double p = std::exp(static_cast<double>(x[j]) - lse);
      di[j] += static_cast<float>(k * (p - (j == r.targets[i] ? 1.0 : 0.0)));
    }
  }
}

}  // namespace nnpipe::cpu
