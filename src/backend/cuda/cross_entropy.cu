// Cross-entropy with ignore_index -100 (torch's mean reduction): one block per row computes the
// log-sum-exp in double; one thread then adds the row losses in order. The result {mean, count}
// stays on the device; nothing here synchronises.
#include "backend/backend.h"
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

// lse of row x (V) in double (max in f32, as the CPU does); every thread of the block gets it.
__device__ double row_lse(const float* x, int64_t v, float* shf, double* shd) {
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = block_max(mx, shf);
  double s = 0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x)
    s += exp(static_cast<double>(x[j]) - static_cast<double>(mx));
  s = block_sum(s, shd);
  return static_cast<double>(mx) + log(s);
}

__device__ bool bad_target(int32_t t, int64_t v) {
  return t != kIgnoreIndex && (t < 0 || t >= v);
}

__global__ void ce_rows_k(const float* logits, const int32_t* targets, int64_t v, double* row_loss,
                          int* err) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int32_t t = targets[blockIdx.x];
  if (t == kIgnoreIndex || bad_target(t, v)) {
    if (threadIdx.x == 0) {
      row_loss[blockIdx.x] = 0;
      if (t != kIgnoreIndex) atomicOr(err, kErrTarget);
    }
    return;
  }
  const float* x = logits + blockIdx.x * v;  // (V)
  const double lse = row_lse(x, v, shf, shd);
  if (threadIdx.x == 0) row_loss[blockIdx.x] = lse - static_cast<double>(x[t]);
}

__global__ void ce_reduce_k(double* loss, const double* row_loss, const int32_t* targets,
                            int64_t n) {
  double sum = 0, c = 0;
  for (int64_t i = 0; i < n; ++i)
    if (targets[i] != kIgnoreIndex) {
      sum += row_loss[i];
      c += 1;
    }
  loss[0] = c > 0 ? sum / c : 0.0;
  loss[1] = c;
}

__global__ void ce_count_k(double* count, const int32_t* targets, int64_t n) {
  double c = 0;
  for (int64_t i = 0; i < n; ++i) c += targets[i] != kIgnoreIndex;
  count[0] = c;
}

__global__ void ce_bwd_k(float* dlogits, const float* logits, const int32_t* targets, int64_t v,
                         float dloss, const double* count, int* err) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int32_t t = targets[blockIdx.x];
  if (t == kIgnoreIndex || count[0] == 0) return;
  if (bad_target(t, v)) {
    if (threadIdx.x == 0) atomicOr(err, kErrTarget);
    return;
  }
  const float* x = logits + blockIdx.x * v;
  float* d = dlogits + blockIdx.x * v;
  const double lse = row_lse(x, v, shf, shd);
  const double k = static_cast<double>(dloss) / count[0];
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    const double p = exp(static_cast<double>(x[j]) - lse);
    d[j] += static_cast<float>(k * (p - (j == t ? 1.0 : 0.0)));
  }
}

}  // namespace

void cross_entropy_fwd(cudaStream_t s, double* loss, const float* logits, const int32_t* targets,
                       int64_t n, int64_t v, double* row_loss, int* err) {
  if (n > 0) {
    ce_rows_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(logits, targets, v, row_loss, err);
    NNPIPE_CUDA_LAUNCHED("ce_rows_k");
  }
  ce_reduce_k<<<1, 1, 0, s>>>(loss, row_loss, targets, n);
  NNPIPE_CUDA_LAUNCHED("ce_reduce_k");
}

void cross_entropy_bwd(cudaStream_t s, float* dlogits, const float* logits, const int32_t* targets,
                       int64_t n, int64_t v, float dloss, double* count, int* err) {
  if (n <= 0) return;
  ce_count_k<<<1, 1, 0, s>>>(count, targets, n);
  NNPIPE_CUDA_LAUNCHED("ce_count_k");
  ce_bwd_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(dlogits, logits, targets, v, dloss, count,
                                                         err);
  NNPIPE_CUDA_LAUNCHED("ce_bwd_k");
}

}  // namespace nnpipe::cuda
