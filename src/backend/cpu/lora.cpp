// LoRA branch (PEFT's Linear.forward): y += scale * B(A(dropout(x))), with the dropout mask given
// as u8 keep bits and the 1/(1-p) scale. The rank r is small (4..64), so four thin sgemms dominate;
// x*mask is recomputed in backward rather than saved (one (N, I) buffer per adapted module would
// double activation memory).
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"

namespace nnpipe::cpu {

namespace {

const uint8_t* keep_bits(const Tensor& keep, const Tensor& x) {
  if (keep.dtype() != DType::kU8 || keep.device() != Device::kCPU || keep.borrowed() ||
      keep.shape() != x.shape())
    fail(ErrorCode::kInvalidArgument, "lora: dropout keep mask {} for x {} (expected u8)",
         keep.describe(), x.describe());
  return keep.raw();
}

// x (N, I) * mask (N, I) -> owned copy; without a mask, x itself.
Tensor dropped(const Tensor& x, const Tensor* keep, float keep_scale) {
  if (!keep) return x;
  const uint8_t* k = keep_bits(*keep, x);
  Tensor out = Tensor::zeros(DType::kF32, x.shape());
  float* o = f32(out, "lora x*mask");
  const float* px = f32(x, "lora x");
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? px[i] * keep_scale : 0.0f;
  return out;
}

void check_lora(const Tensor& x, const Tensor& a, const Tensor& b, int64_t o) {
  if (x.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || a.dim(1) != x.dim(1) ||
      b.dim(1) != a.dim(0) || b.dim(0) != o)
    fail(ErrorCode::kInvalidArgument, "lora: x {}, A {}, B {} for {} outputs", x.describe(),
         a.describe(), b.describe(), o);
}

}  // namespace

void CpuBackend::lora_forward(Tensor& y, Tensor& xa, const Tensor& x, const Tensor* keep,
                              float keep_scale, const Tensor& a, const Tensor& b, float scale) {
  if (y.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_forward: y {}", y.describe());
  check_lora(x, a, b, y.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(y, DType::kF32, {n, o}, "lora_forward y");
  check_tensor(xa, DType::kF32, {n, r}, "lora_forward xa");
  const Tensor xd = dropped(x, keep, keep_scale);  // (N, I)
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), ri = static_cast<int>(r),
            oi = static_cast<int>(o);
  // xa (N, r) = xd (N, I) A^T (I, r)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, ri, ii, 1.0f, f32(xd, "lora xd"), ii,
              f32(a, "lora A"), ii, 0.0f, f32(xa, "lora xa"), ri);
  // y (N, O) += scale * xa (N, r) B^T (r, O)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, oi, ri, scale, f32(xa, "lora xa"), ri,
              f32(b, "lora B"), ri, 1.0f, f32(y, "lora y"), oi);
}

void CpuBackend::lora_backward(Tensor* dx, Tensor& da, Tensor& db, const Tensor& dy,
                               const Tensor& x, const Tensor* keep, float keep_scale,
                               const Tensor& xa, const Tensor& a, const Tensor& b, float scale) {
  if (dy.ndim() != 2) fail(ErrorCode::kInvalidArgument, "lora_backward: dy {}", dy.describe());
  check_lora(x, a, b, dy.dim(1));
  const int64_t n = x.dim(0), in = x.dim(1), r = a.dim(0), o = b.dim(0);
  check_tensor(xa, DType::kF32, {n, r}, "lora_backward xa");
  check_tensor(da, DType::kF32, {r, in}, "lora_backward dA");
  check_tensor(db, DType::kF32, {o, r}, "lora_backward dB");
  const int ni = static_cast<int>(n), ii = static_cast<int>(in), ri = static_cast<int>(r),
            oi = static_cast<int>(o);
  const float* g = f32(dy, "lora dy");
  // dB (O, r) += scale * dy^T (O, N) xa (N, r)
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, oi, ri, ni, scale, g, oi, f32(xa, "lora xa"),
              ri, 1.0f, f32(db, "lora dB"), ri);
  // dxa (N, r) = scale * dy (N, O) B (O, r)
  Tensor dxa = Tensor::zeros(DType::kF32, {n, r});
  float* pdxa = f32(dxa, "lora dxa");
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ri, oi, scale, g, oi, f32(b, "lora B"),
              ri, 0.0f, pdxa, ri);
  // dA (r, I) += dxa^T (r, N) xd (N, I)
  const Tensor xd = dropped(x, keep, keep_scale);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ri, ii, ni, 1.0f, pdxa, ri,
              f32(xd, "lora xd"), ii, 1.0f, f32(da, "lora dA"), ii);
  if (!dx) return;
  check_tensor(*dx, DType::kF32, {n, in}, "lora_backward dx");
  if (!keep) {  // dx (N, I) += dxa (N, r) A (r, I)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, ri, 1.0f, pdxa, ri,
                f32(a, "lora A"), ii, 1.0f, f32(*dx, "lora dx"), ii);
    return;
  }
  // With dropout the mask multiplies the gradient too: dx += mask * (dxa A).
  Tensor dxd = Tensor::zeros(DType::kF32, {n, in});
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ii, ri, 1.0f, pdxa, ri,
              f32(a, "lora A"), ii, 0.0f, f32(dxd, "lora dxd"), ii);
  float* pdx = f32(*dx, "lora dx");
  const float* pd = f32(dxd, "lora dxd");
  const uint8_t* k = keep_bits(*keep, x);
  const int64_t total = n * in;
#pragma omp parallel for simd if (total >= kParallelMin)
  for (int64_t i = 0; i < total; ++i) pdx[i] += k[i] ? keep_scale * pd[i] : 0.0f;
}

}  // namespace nnpipe::cpu

namespace nnpipe::cpu {

// Inference LoRA with ggml's numerics (llama.cpp's build_lora_mm): t = x A^T as a ggml matmul of
// A's type, then u = t B^T with t converted for B's type, y += u * scale.
void CpuBackend::lora_apply(Tensor& y, Tensor& xa, const Tensor& x, const Tensor& a,
                            const Tensor& b, const Tensor* bt, float scale, Numerics num) {
  const int64_t n = x.dim(0), r = a.dim(0), out = b.dim(0);
  check_lora(x, a, b, y.dim(1));
  check_tensor(y, DType::kF32, {n, out}, "lora y");
  if (xa.dtype() != DType::kF32 || xa.capacity() < static_cast<size_t>(n * r) * sizeof(float))
    fail(ErrorCode::kInvalidArgument, "lora_apply: scratch {} for ({}, {})", xa.describe(), n, r);
  float* t = reinterpret_cast<float*>(xa.raw());  // (n, r)
  const float* px = f32(x, "lora x");
  float* py = f32(y, "lora y");
  const bool invariant = num == Numerics::kGgmlInvariant;
  qmatmul(t, px, n, qmatrix_of(a, "lora A"), invariant);
  thread_local std::vector<float> u_buf, t16_buf;
  u_buf.resize(static_cast<size_t>(n * out));
  float* u = u_buf.data();  // (n, out)
  const QMatrix qb = qmatrix_of(b, "lora B");
  if (!bt || !bt->defined()) {
    qmatmul(u, t, n, qb, invariant);
  } else {
    check_tensor(*bt, DType::kF32, {r, out}, "lora B^T");
    // t rounded as ggml converts activations for B's type (f16/bf16), then u = t B^T.
    t16_buf.resize(static_cast<size_t>(n * r));
    float* t16 = t16_buf.data();
    for (int64_t i = 0; i < n; ++i)
      qk::convert_activations(qb.type, t + i * r, r, reinterpret_cast<uint8_t*>(t16 + i * r));
    const float* pbt = f32(*bt, "lora B^T");
    if (n >= 8 && !invariant) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n),
                  static_cast<int>(out), static_cast<int>(r), 1.0f, t16, static_cast<int>(r), pbt,
                  static_cast<int>(out), 0.0f, u, static_cast<int>(out));
    } else {
      for (int64_t i = 0; i < n; ++i) {
        float* ui = u + i * out;
        std::fill(ui, ui + out, 0.0f);
        for (int64_t k = 0; k < r; ++k) {
          const float c = t16[i * r + k];
          const float* bk = pbt + k * out;
          for (int64_t o = 0; o < out; ++o) ui[o] += c * bk[o];  // (out) axpy
        }
      }
    }
  }
  for (int64_t i = 0; i < n * out; ++i) py[i] += u[i] * scale;
}

}  // namespace nnpipe::cpu
