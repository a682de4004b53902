// SwiGLU MLP activation: out = silu(gate) * up, silu(g) = g * sigmoid(g).
#include <cmath>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {

void CpuBackend::swiglu(Tensor& out, const Tensor& gate, const Tensor& up) {
  same_shape(gate, up, "swiglu");
  same_shape(out, gate, "swiglu out");
  const float* g = f32(gate, "gate");
  const float* u = f32(up, "up");
  float* o = f32(out, "out");
  const int64_t n = gate.numel();
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// d silu(g)/dg = s * (1 + g * (1 - s)) with s = sigmoid(g).
void CpuBackend::swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate,
                                 const Tensor& up) {
  same_shape(dgate, gate, "swiglu_backward dgate");
  same_shape(dup, up, "swiglu_backward dup");
  same_shape(dout, gate, "swiglu_backward dout");
  const float* g = f32(gate, "gate");
  const float* u = f32(up, "up");
  const float* go = f32(dout, "dout");
  float* dg = f32(dgate, "dgate");
  float* du = f32(dup, "dup");
  const int64_t n = gate.numel();
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-g[i]));
    dg[i] += go[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    du[i] += go[i] * g[i] * s;
  }
}

}  // namespace nnpipe::cpu
