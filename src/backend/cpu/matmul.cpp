// Linear layers: out = x W^T + b via OpenBLAS sgemm (row-major, W stored [out, in] as in HF).
#include <cblas.h>

#include "backend/cpu/cpu_backend.h"

namespace nnpipe::cpu {

void CpuBackend::matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  if (x.ndim() != 2 || w.ndim() != 2 || x.dim(1) != w.dim(1))
    fail(ErrorCode::kInvalidArgument, "matmul: x {} vs w {}", x.describe(), w.describe());
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(out, DType::kF32, {n, o}, "matmul out");
  float* y = f32(out, "matmul out");  // (N, O)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(o),
              static_cast<int>(in), 1.0f, f32(x, "matmul x"), static_cast<int>(in),
              f32(w, "matmul w"), static_cast<int>(in), 0.0f, y, static_cast<int>(o));
  if (bias && bias->defined()) {
    check_tensor(*bias, DType::kF32, {o}, "matmul bias");
    const float* b = f32(*bias, "matmul bias");
#pragma omp parallel for if (n * o >= kParallelMin)
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < o; ++c) y[r * o + c] += b[c];
  }
}

void CpuBackend::matmul_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dout,
                                 const Tensor& x, const Tensor& w) {
  const int64_t n = x.dim(0), in = x.dim(1), o = w.dim(0);
  check_tensor(dout, DType::kF32, {n, o}, "matmul_backward dout");
  check_tensor(dw, DType::kF32, {o, in}, "matmul_backward dw");
  const float* g = f32(dout, "dout");
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), oi = static_cast<int>(o);
  if (dx) {  // dx (N, I) += dout (N, O) W (O, I)
    check_tensor(*dx, DType::kF32, {n, in}, "matmul_backward dx");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, oi, 1.0f, g, oi, f32(w, "w"), ii,
                1.0f, f32(*dx, "dx"), ii);
  }
  // dW (O, I) += dout^T (O, N) x (N, I)
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oi, ii, ni, 1.0f, g, oi, f32(x, "x"), ii,
              1.0f, f32(dw, "dw"), ii);
  if (db) {
    check_tensor(*db, DType::kF32, {o}, "matmul_backward db");
    float* b = f32(*db, "db");
#pragma omp parallel for if (n * o >= kParallelMin)
    for (int64_t c = 0; c < o; ++c) {
      float s = 0;
      for (int64_t r = 0; r < n; ++r) s += g[r * o + c];
      b[c] += s;
    }
  }
}

}  // namespace nnpipe::cpu
