// The per-row and element-wise layers on the GPU (host side: checks, then the launchers of
// rmsnorm.cu, rope.cu, elementwise.cu, embedding.cu, quant.cu and cross_entropy.cu).
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace nnpipe::cuda {

void CudaBackend::rmsnorm(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps,
                          Numerics num) {
  if (x.ndim() != 2) fail(ErrorCode::kInvalidArgument, "rmsnorm: x {} not (N, C)", x.describe());
  const int64_t n = x.dim(0), c = x.dim(1);
  check_tensor(w, DType::kF32, {c}, "rmsnorm w");
  check_tensor(out, DType::kF32, {n, c}, "rmsnorm out");
  const bool ggml = num != Numerics::kTorch;  // kGgml keeps no rstd
  float* pr = nullptr;
  if (!ggml) {
    check_tensor(rstd, DType::kF32, {n}, "rmsnorm rstd");
    pr = f32(rstd, "rstd");
  }
  rmsnorm_fwd(stream_, f32(out, "out"), pr, f32(x, "x"), f32(w, "w"), n, c, eps, ggml);
}

void CudaBackend::rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x,
                                   const Tensor& w, const Tensor& rstd) {
  if (x.ndim() != 2) fail(ErrorCode::kInvalidArgument, "rmsnorm_backward: x {}", x.describe());
  const int64_t n = x.dim(0), c = x.dim(1);
  same_shape(dx, x, "rmsnorm_backward dx");
  same_shape(dout, x, "rmsnorm_backward dout");
  same_shape(dw, w, "rmsnorm_backward dw");
  check_tensor(w, DType::kF32, {c}, "rmsnorm_backward w");
  check_tensor(rstd, DType::kF32, {n}, "rmsnorm_backward rstd");
  rmsnorm_bwd(stream_, f32(dx, "dx"), f32(dw, "dw"), f32(dout, "dout"), f32(x, "x"), f32(w, "w"),
              f32(rstd, "rstd"), n, c);
}

namespace {

// transformers' inv_freq (f32, as the CPU backend computes it) and llama.cpp's theta_scale.
RopeFreqs freqs(int64_t d, double theta) {
  if (d / 2 > kRopeMaxHalf)
    fail(ErrorCode::kUnsupported, "rope: head dim {} (the CUDA kernel takes up to {})", d,
         2 * kRopeMaxHalf);
  RopeFreqs f{};
  for (int64_t i = 0; i < d / 2; ++i)
    f.inv[i] = 1.0f / std::pow(static_cast<float>(theta),
                               static_cast<float>(2 * i) / static_cast<float>(d));
  f.theta_scale = std::pow(static_cast<float>(theta), -2.0f / static_cast<float>(d));
  return f;
}

void check_rope(const Tensor& x, const Tensor& positions) {
  if (x.ndim() != 4 || x.dim(3) % 2 != 0)
    fail(ErrorCode::kInvalidArgument, "rope: expected (B, T, H, D) with even D, got {}",
         x.describe());
  check_tensor(positions, DType::kI32, {x.dim(0), x.dim(1)}, "rope positions");
}

}  // namespace

void CudaBackend::rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta,
                       Numerics num) {
  same_shape(out, x, "rope out");
  check_rope(x, positions);
  const int64_t d = x.dim(3);
  nnpipe::cuda::rope(stream_, f32(out, "rope out"), f32(x, "rope x"), i32(positions, "positions"),
                     x.dim(0) * x.dim(1), x.dim(2), d, freqs(d, theta),
                     num == Numerics::kTorch ? RopeMode::kTorch : RopeMode::kGgml);
}

void CudaBackend::rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions,
                                double theta) {
  same_shape(dx, dout, "rope_backward dx");
  check_rope(dout, positions);
  const int64_t d = dout.dim(3);
  nnpipe::cuda::rope(stream_, f32(dx, "rope dx"), f32(dout, "rope dout"),
                     i32(positions, "positions"), dout.dim(0) * dout.dim(1), dout.dim(2), d,
                     freqs(d, theta), RopeMode::kTorchBackward);
}

void CudaBackend::swiglu(Tensor& out, const Tensor& gate, const Tensor& up) {
  same_shape(gate, up, "swiglu");
  same_shape(out, gate, "swiglu out");
  swiglu_fwd(stream_, f32(out, "out"), f32(gate, "gate"), f32(up, "up"), gate.numel());
}

void CudaBackend::swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout,
                                  const Tensor& gate, const Tensor& up) {
  same_shape(dgate, gate, "swiglu_backward dgate");
  same_shape(dup, up, "swiglu_backward dup");
  same_shape(dout, gate, "swiglu_backward dout");
  swiglu_bwd(stream_, f32(dgate, "dgate"), f32(dup, "dup"), f32(dout, "dout"), f32(gate, "gate"),
             f32(up, "up"), gate.numel());
}

// Ids are checked on the device: an id out of range gives a zero row and makes the next
// synchronize() throw.
void CudaBackend::embedding(Tensor& out, const Tensor& ids, const Tensor& table) {
  on_device(table, "embedding table");
  if (table.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "embedding: table {} not (V, C)", table.describe());
  const int64_t n = ids.numel(), v = table.dim(0), c = table.dim(1);
  check_tensor(out, DType::kF32, {n, c}, "embedding out");
  const KType t = ktype(table.dtype(), "embedding table");
  dequant_rows(stream_, t, table.raw(), static_cast<int64_t>(dtype_row_bytes(table.dtype(), c)), c,
               i32(ids, "ids"), v, 0, n, f32(out, "out"), err_);
}

void CudaBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  if (dtable.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "embedding_backward: dtable {}", dtable.describe());
  const int64_t n = ids.numel(), v = dtable.dim(0), c = dtable.dim(1);
  check_tensor(dout, DType::kF32, {n, c}, "embedding_backward dout");
  embedding_bwd(stream_, f32(dtable, "dtable"), f32(dout, "dout"), i32(ids, "ids"), n, v, c, err_);
}

void CudaBackend::cross_entropy(Tensor& loss, const Tensor& logits, const Tensor& targets) {
  check_tensor(loss, DType::kF64, {2}, "cross_entropy loss");
  on_device(loss, "cross_entropy loss");
  if (logits.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "cross_entropy: logits {} not (N, V)", logits.describe());
  const int64_t n = logits.dim(0), v = logits.dim(1);
  check_tensor(targets, DType::kI32, {n}, "cross_entropy targets");
  Tensor rows = scratch(DType::kF64, {std::max<int64_t>(n, 1)});
  cross_entropy_fwd(stream_, reinterpret_cast<double*>(loss.raw()), f32(logits, "logits"),
                    i32(targets, "targets"), n, v, reinterpret_cast<double*>(rows.raw()), err_);
}

void CudaBackend::cross_entropy_backward(Tensor& dlogits, const Tensor& logits,
                                         const Tensor& targets, float dloss) {
  if (logits.ndim() != 2)
    fail(ErrorCode::kInvalidArgument, "cross_entropy: logits {} not (N, V)", logits.describe());
  const int64_t n = logits.dim(0), v = logits.dim(1);
  check_tensor(targets, DType::kI32, {n}, "cross_entropy targets");
  same_shape(dlogits, logits, "cross_entropy_backward dlogits");
  Tensor count = scratch(DType::kF64, {1});
  cross_entropy_bwd(stream_, f32(dlogits, "dlogits"), f32(logits, "logits"),
                    i32(targets, "targets"), n, v, dloss, reinterpret_cast<double*>(count.raw()),
                    err_);
}

}  // namespace nnpipe::cuda
