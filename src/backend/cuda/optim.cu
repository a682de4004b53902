// AdamW, dropout masks and the squared gradient norm. AdamW is torch's operation order with
// explicit fmaf where torch fuses (backend/optim.h) and IEEE sqrt/division (nvcc's defaults), so
// it gives the CPU backend's bits; dropout_mask evaluates the same counter RNG (dropout_keep) per
// element, so masks equal the CPU's bit for bit.
#include "backend/cuda/common.cuh"
#include "backend/optim.h"

namespace nnpipe::cuda {
namespace {

__global__ void adamw_k(float* p, const float* g, float* m, float* v, int64_t n, AdamWConsts k) {
  NNPIPE_GRID_LOOP(i, n) {
    const float gi = g[i];
    float pi = p[i];
    if (k.decay != 1.0f) pi = pi * k.decay;
    const float mi = k.small_w1 ? fmaf(k.w1, gi - m[i], m[i]) : fmaf(k.w1 - 1.0f, gi - m[i], gi);
    const float vi = fmaf(k.w2 * gi, gi, v[i] * k.b2);
    const float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
    p[i] = pi + (k.neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void dropout_k(uint8_t* keep, int64_t n, uint64_t threshold, uint64_t seed,
                          uint64_t offset) {
  NNPIPE_GRID_LOOP(i, n) keep[i] = dropout_keep(threshold, seed, offset + static_cast<uint64_t>(i));
}

// One block per chunk: f64 products (exact for f32 inputs) summed by a fixed tree.
__global__ void sq_norm_chunks_k(const float* x, int64_t n, int64_t chunk, double* partials) {
  __shared__ double sh[32];
  const int64_t b = blockIdx.x * chunk, e = n < b + chunk ? n : b + chunk;
  double s = 0;
  for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x)
    s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}
// The chunk sums added in order, as the CPU does.
__global__ void sum_in_order_k(const double* partials, int64_t chunks, double* out) {
  double s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partials[c];
  out[0] = s;
}

}  // namespace

void adamw(cudaStream_t s, float* p, const float* g, float* m, float* v, int64_t n,
           const AdamWConsts& k) {
  if (n <= 0) return;
  adamw_k<<<blocks_for(n), kThreads, 0, s>>>(p, g, m, v, n, k);
  NNPIPE_CUDA_LAUNCHED("adamw_k");
}

void dropout_mask(cudaStream_t s, uint8_t* keep, int64_t n, uint64_t threshold, uint64_t seed,
                  uint64_t offset) {
  if (n <= 0) return;
  dropout_k<<<blocks_for(n), kThreads, 0, s>>>(keep, n, threshold, seed, offset);
  NNPIPE_CUDA_LAUNCHED("dropout_k");
}

void sq_norm(cudaStream_t s, const float* x, int64_t n, int64_t chunk, double* partials,
             double* out) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (chunks > 0) {
    sq_norm_chunks_k<<<static_cast<unsigned>(chunks), 512, 0, s>>>(x, n, chunk, partials);
    NNPIPE_CUDA_LAUNCHED("sq_norm_chunks_k");
  }
  sum_in_order_k<<<1, 1, 0, s>>>(partials, chunks, out);
  NNPIPE_CUDA_LAUNCHED("sum_in_order_k");
}

}  // namespace nnpipe::cuda
