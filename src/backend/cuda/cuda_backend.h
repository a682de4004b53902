// The CUDA backend: every op of backend/backend.h on device 0, queued on one stream with no host
// synchronisation inside an op (sq_norm, which returns a number, is the exception). Tensors live
// in device memory (Device::kCUDA) from cudaMallocAsync on that stream, freed with cudaFreeAsync
// when the last handle goes. Host code (shape and dtype checks, cuBLAS calls) is in the .cpp
// files, compiled by the host compiler with warnings as errors; the kernels are in the .cu files,
// one per op family (kernels.h lists their launchers).
//
// Errors that only the device can see (a token id, target or length out of range) set a bit of a
// device error word; synchronize() and download() read it and throw, naming the op family.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"

namespace nnpipe::cuda {

class CudaBackend final : public Backend {
 public:
  CudaBackend();  // shares the process-wide stream, cuBLAS handle and error word
  Device device() const override { return Device::kCUDA; }
  Tensor zeros(DType dtype, std::vector<int64_t> shape) override;
  void zero(Tensor& t) override;
  Tensor to_f32(const Tensor& src) override;
  void copy_bytes(Tensor& dst, const Tensor& src, size_t bytes) override;
  bool supports(std::string_view op, DType dtype) const override;
  using Backend::upload;
  void upload(Tensor& dst, std::span<const uint8_t> host) override;
  void download(std::span<uint8_t> host, const Tensor& t) override;
  void synchronize() override;
  void matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias,
              Numerics num) override;
  void add_bias(Tensor& y, const Tensor& b) override;
  void lora_apply(Tensor& y, Tensor& xa, const Tensor& x, const Tensor& a, const Tensor& b,
                  const Tensor* bt, float scale, Numerics num) override;
  void lora_apply_rows(Tensor& y, Tensor& xa, const Tensor& x, std::span<const LoraRows> items,
                       Numerics num) override;
  using Backend::attention_kv;
  using Backend::kv_write;
  void kv_write(std::span<const KvSeq> seqs, int64_t layer, const Tensor& k,
                const Tensor& v) override;
  void attention_kv(Tensor& out, const Tensor& q, std::span<const KvSeq> seqs, int64_t layer,
                    int64_t heads) override;
  void matmul_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dout, const Tensor& x,
                       const Tensor& w, Numerics num) override;
  void lora_forward(Tensor& y, Tensor& xa, const Tensor& x, const Tensor* keep, float keep_scale,
                    const Tensor& a, const Tensor& b, float scale) override;
  void lora_backward(Tensor* dx, Tensor& da, Tensor& db, const Tensor& dy, const Tensor& x,
                     const Tensor* keep, float keep_scale, const Tensor& xa, const Tensor& a,
                     const Tensor& b, float scale) override;
  void rmsnorm(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps,
               Numerics num) override;
  void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x,
                        const Tensor& w, const Tensor& rstd) override;
  void rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta,
            Numerics num) override;
  void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions,
                     double theta) override;
  void attention(Tensor& out, Tensor& att, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& lengths) override;
  void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& att,
                          const Tensor& q, const Tensor& k, const Tensor& v) override;
  void swiglu(Tensor& out, const Tensor& gate, const Tensor& up) override;
  void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate,
                       const Tensor& up) override;
  void embedding(Tensor& out, const Tensor& ids, const Tensor& table) override;
  void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) override;
  void cross_entropy(Tensor& loss, const Tensor& logits, const Tensor& targets) override;
  void cross_entropy_backward(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                              float dloss) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void accumulate(Tensor& dst, const Tensor& src) override;
  void axpy(Tensor& y, float a, const Tensor& x) override;
  void scale(Tensor& x, float a) override;
  double sq_norm(const Tensor& x) override;
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWStep& s) override;
  void dropout_mask(Tensor& keep, double p, uint64_t seed, uint64_t offset) override;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  int* err() const { return err_; }
  // Device scratch of `bytes`, freed (stream-ordered) when the last handle goes.
  Tensor scratch(DType dtype, std::vector<int64_t> shape);

  // Row-major C (m, n) = alpha op(A) op(B) + beta C in f32 (cuBLAS with TF32 off), the
  // arguments as cblas_sgemm(CblasRowMajor, ...) takes them.
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

 private:
  cudaStream_t stream_;
  cublasHandle_t blas_;
  int* err_;  // device error word (ErrBit)
};

// --- checked typed views of device tensors (host side) ---
float* f32(Tensor& t, const char* what);
const float* f32(const Tensor& t, const char* what);
const int32_t* i32(const Tensor& t, const char* what);
// Throws unless t is a device tensor (any dtype).
void on_device(const Tensor& t, const char* what);
void same_shape(const Tensor& a, const Tensor& b, const char* what);
// The kernels' code for a weight / table dtype; throws kUnsupported naming `what` otherwise.
KType ktype(DType d, const char* what);
bool is_ktype(DType d);
inline bool is_half(DType d) {
  return d == DType::kF16 || d == DType::kBF16;
}

}  // namespace nnpipe::cuda
