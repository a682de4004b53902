// RMSNorm: one block per row (a tree sum of squares); kGgml sums the squares in double and
// multiplies in ggml's order. Backward: dx per row as on the CPU, dw one thread per column with
// the rows in order (no atomics: the same sum every run).
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

__global__ void rmsnorm_torch_k(float* out, float* rstd, const float* x, const float* w, int64_t c,
                                float eps) {
  __shared__ float sh[32];
  const float* xr = x + blockIdx.x * c;  // (C)
  float ss = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  const float s = 1.0f / sqrtf(ss / static_cast<float>(c) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = s;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
    out[blockIdx.x * c + i] = w[i] * (xr[i] * s);
}

__global__ void rmsnorm_ggml_k(float* out, const float* x, const float* w, int64_t c, float eps) {
  __shared__ double sh[32];
  const float* xr = x + blockIdx.x * c;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) sum += static_cast<double>(xr[i] * xr[i]);
  sum = block_sum(sum, sh);
  const float mean = static_cast<float>(sum / static_cast<double>(c));
  const float scale = 1.0f / sqrtf(mean + eps);
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
    out[blockIdx.x * c + i] = (xr[i] * scale) * w[i];
}

// dx = rstd * (g*w - xhat * mean(g*w*xhat)), xhat = x * rstd.
__global__ void rmsnorm_dx_k(float* dx, const float* g, const float* x, const float* w,
                             const float* rstd, int64_t c) {
  __shared__ float sh[32];
  const int64_t off = blockIdx.x * c;
  const float s = rstd[blockIdx.x];
  float dot = 0;
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x) dot += g[off + i] * w[i] * x[off + i] * s;
  dot = block_sum(dot, sh) / static_cast<float>(c);
  for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
    dx[off + i] += s * (g[off + i] * w[i] - x[off + i] * s * dot);
}

__global__ void rmsnorm_dw_k(float* dw, const float* g, const float* x, const float* rstd,
                             int64_t n, int64_t c) {
  NNPIPE_GRID_LOOP(i, c) {
    float acc = 0;
    for (int64_t r = 0; r < n; ++r) acc += g[r * c + i] * x[r * c + i] * rstd[r];
    dw[i] += acc;
  }
}

}  // namespace

void rmsnorm_fwd(cudaStream_t s, float* out, float* rstd, const float* x, const float* w, int64_t n,
                 int64_t c, float eps, bool ggml) {
  if (n <= 0) return;
  if (ggml)
    rmsnorm_ggml_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(out, x, w, c, eps);
  else
    rmsnorm_torch_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(out, rstd, x, w, c, eps);
  NNPIPE_CUDA_LAUNCHED("rmsnorm_k");
}

void rmsnorm_bwd(cudaStream_t s, float* dx, float* dw, const float* dout, const float* x,
                 const float* w, const float* rstd, int64_t n, int64_t c) {
  if (n <= 0) return;
  rmsnorm_dx_k<<<static_cast<unsigned>(n), kThreads, 0, s>>>(dx, dout, x, w, rstd, c);
  NNPIPE_CUDA_LAUNCHED("rmsnorm_dx_k");
  rmsnorm_dw_k<<<blocks_for(c, 128), 128, 0, s>>>(dw, dout, x, rstd, n, c);
  NNPIPE_CUDA_LAUNCHED("rmsnorm_dw_k");
}

}  // namespace nnpipe::cuda
