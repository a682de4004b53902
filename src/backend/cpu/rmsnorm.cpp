// RMSNorm (transformers Qwen2RMSNorm in fp32): y = w * x * rstd, rstd = 1/sqrt(mean(x^2) + eps);
// with kGgml numerics ggml's order (a double sum of squares, (x * rstd) * w).
#include <cmath>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {

void CpuBackend::rmsnorm(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps,
                         Numerics num) {
  const int64_t n = x.dim(0), c = x.dim(1);
  check_tensor(w, DType::kF32, {c}, "rmsnorm w");
  check_tensor(out, DType::kF32, {n, c}, "rmsnorm out");
  const float* px = f32(x, "x");
  const float* pw = f32(w, "w");
  float* py = f32(out, "out");
  if (num != Numerics::kTorch) {
    // ggml_compute_forward_rms_norm_f32 then ggml_mul by the weight; rstd is not kept.
#pragma omp parallel for schedule(static) if (n * c >= 2 * kParallelMin)
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = px + r * c;  // (C)
      float* yr = py + r * c;
      double sum = 0;
      for (int64_t i = 0; i < c; ++i) sum += static_cast<double>(xr[i] * xr[i]);
      const float mean = static_cast<float>(sum / static_cast<double>(c));
      const float scale = 1.0f / std::sqrt(mean + eps);
      for (int64_t i = 0; i < c; ++i) yr[i] = (xr[i] * scale) * pw[i];
    }
    return;
  }
  check_tensor(rstd, DType::kF32, {n}, "rmsnorm rstd");
  float* pr = f32(rstd, "rstd");
#pragma omp parallel for if (n * c >= kParallelMin)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = px + r * c;  // (C)
    float ss = 0;
    for (int64_t i = 0; i < c; ++i) ss += xr[i] * xr[i];
    float s = 1.0f / std::sqrt(ss / static_cast<float>(c) + eps);
    pr[r] = s;
    for (int64_t i = 0; i < c; ++i) py[r * c + i] = pw[i] * (xr[i] * s);
  }
}

// With xhat = x * rstd: dx = rstd * (g*w - xhat * mean(g*w*xhat)), dw = sum_rows g * xhat.
void CpuBackend::rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x,
                                  const Tensor& w, const Tensor& rstd) {
  const int64_t n = x.dim(0), c = x.dim(1);
  same_shape(dx, x, "rmsnorm_backward dx");
  same_shape(dout, x, "rmsnorm_backward dout");
  same_shape(dw, w, "rmsnorm_backward dw");
  const float* px = f32(x, "x");
  const float* pw = f32(w, "w");
  const float* pg = f32(dout, "dout");
  const float* pr = f32(rstd, "rstd");
  float* pdx = f32(dx, "dx");
  float* pdw = f32(dw, "dw");
#pragma omp parallel for if (n * c >= kParallelMin)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = px + r * c;
    const float* gr = pg + r * c;
    float s = pr[r], dot = 0;
    for (int64_t i = 0; i < c; ++i) dot += gr[i] * pw[i] * xr[i] * s;
    dot /= static_cast<float>(c);
    for (int64_t i = 0; i < c; ++i) pdx[r * c + i] += s * (gr[i] * pw[i] - xr[i] * s * dot);
  }
  // dw: columns in parallel so that no two threads write the same element.
#pragma omp parallel for if (n * c >= kParallelMin)
  for (int64_t i = 0; i < c; ++i) {
    float acc = 0;
    for (int64_t r = 0; r < n; ++r) acc += pg[r * c + i] * px[r * c + i] * pr[r];
    pdw[i] += acc;
  }
}

}  // namespace nnpipe::cpu
