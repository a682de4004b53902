// Element-wise ops (residual add, accumulate, bias, axpy, scale, dropout masks applied, half
// conversion) and SwiGLU. Compiled with -fmad=false: every product and sum rounds once, as on the
// CPU.
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

__global__ void add_k(float* out, const float* a, const float* b, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) out[i] = a[i] + b[i];
}
__global__ void accumulate_k(float* d, const float* s, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) d[i] += s[i];
}
__global__ void add_bias_k(float* y, const float* b, int64_t n, int64_t o) {
  NNPIPE_GRID_LOOP(i, n * o) y[i] += b[i % o];
}
// One thread per column, rows in order: the CPU's summation order, no atomics.
__global__ void bias_grad_k(float* db, const float* g, int64_t n, int64_t o) {
  NNPIPE_GRID_LOOP(c, o) {
    float s = 0;
    for (int64_t r = 0; r < n; ++r) s += g[r * o + c];
    db[c] += s;
  }
}
__global__ void axpy_k(float* y, float a, const float* x, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(a, x[i]));
}
__global__ void scale_k(float* x, float a, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) x[i] *= a;
}
__global__ void apply_keep_k(float* out, const float* x, const uint8_t* keep, float ks, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) out[i] = keep[i] ? x[i] * ks : 0.0f;
}
__global__ void accumulate_keep_k(float* dx, const float* d, const uint8_t* keep, float ks,
                                  int64_t n) {
  NNPIPE_GRID_LOOP(i, n) dx[i] += keep[i] ? ks * d[i] : 0.0f;
}
__global__ void half_to_f32_k(KType t, const void* src, float* dst, int64_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  const auto* f = static_cast<const float*>(src);
  NNPIPE_GRID_LOOP(i, n) {
    dst[i] = t == KType::kF16    ? f16_bits_to_f32(h[i])
             : t == KType::kBF16 ? bf16_bits_to_f32(h[i])
                                 : f[i];
  }
}
__global__ void swiglu_fwd_k(float* out, const float* g, const float* u, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
// d silu(g)/dg = s * (1 + g * (1 - s)) with s = sigmoid(g).
__global__ void swiglu_bwd_k(float* dg, float* du, const float* go, const float* g, const float* u,
                             int64_t n) {
  NNPIPE_GRID_LOOP(i, n) {
    const float s = 1.0f / (1.0f + expf(-g[i]));
    dg[i] += go[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    du[i] += go[i] * g[i] * s;
  }
}

}  // namespace

void add_f32(cudaStream_t s, float* out, const float* a, const float* b, int64_t n) {
  if (n <= 0) return;
  add_k<<<blocks_for(n), kThreads, 0, s>>>(out, a, b, n);
  NNPIPE_CUDA_LAUNCHED("add_k");
}
void accumulate_f32(cudaStream_t s, float* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  accumulate_k<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n);
  NNPIPE_CUDA_LAUNCHED("accumulate_k");
}
void add_bias_f32(cudaStream_t s, float* y, const float* b, int64_t n, int64_t o) {
  if (n * o <= 0) return;
  add_bias_k<<<blocks_for(n * o), kThreads, 0, s>>>(y, b, n, o);
  NNPIPE_CUDA_LAUNCHED("add_bias_k");
}
void bias_grad_f32(cudaStream_t s, float* db, const float* g, int64_t n, int64_t o) {
  if (o <= 0) return;
  bias_grad_k<<<blocks_for(o, 128), 128, 0, s>>>(db, g, n, o);
  NNPIPE_CUDA_LAUNCHED("bias_grad_k");
}
void axpy_f32(cudaStream_t s, float* y, float a, const float* x, int64_t n) {
  if (n <= 0) return;
  axpy_k<<<blocks_for(n), kThreads, 0, s>>>(y, a, x, n);
  NNPIPE_CUDA_LAUNCHED("axpy_k");
}
void scale_f32(cudaStream_t s, float* x, float a, int64_t n) {
  if (n <= 0) return;
  scale_k<<<blocks_for(n), kThreads, 0, s>>>(x, a, n);
  NNPIPE_CUDA_LAUNCHED("scale_k");
}
void apply_keep(cudaStream_t s, float* out, const float* x, const uint8_t* keep, float keep_scale,
                int64_t n) {
  if (n <= 0) return;
  apply_keep_k<<<blocks_for(n), kThreads, 0, s>>>(out, x, keep, keep_scale, n);
  NNPIPE_CUDA_LAUNCHED("apply_keep_k");
}
void accumulate_keep(cudaStream_t s, float* dx, const float* d, const uint8_t* keep,
                     float keep_scale, int64_t n) {
  if (n <= 0) return;
  accumulate_keep_k<<<blocks_for(n), kThreads, 0, s>>>(dx, d, keep, keep_scale, n);
  NNPIPE_CUDA_LAUNCHED("accumulate_keep_k");
}
void half_to_f32(cudaStream_t s, KType t, const void* src, float* dst, int64_t n) {
  if (n <= 0) return;
  half_to_f32_k<<<blocks_for(n), kThreads, 0, s>>>(t, src, dst, n);
  NNPIPE_CUDA_LAUNCHED("half_to_f32_k");
}
void swiglu_fwd(cudaStream_t s, float* out, const float* g, const float* u, int64_t n) {
  if (n <= 0) return;
  swiglu_fwd_k<<<blocks_for(n), kThreads, 0, s>>>(out, g, u, n);
  NNPIPE_CUDA_LAUNCHED("swiglu_fwd_k");
}
void swiglu_bwd(cudaStream_t s, float* dg, float* du, const float* dout, const float* g,
                const float* u, int64_t n) {
  if (n <= 0) return;
  swiglu_bwd_k<<<blocks_for(n), kThreads, 0, s>>>(dg, du, dout, g, u, n);
  NNPIPE_CUDA_LAUNCHED("swiglu_bwd_k");
}

}  // namespace nnpipe::cuda
