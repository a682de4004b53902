// The CPU backend: fp32 compute, OpenBLAS sgemm for matmuls, the ggml-typed kernels of qmatmul*.cpp
// for quantized weights, OpenMP for the element-wise and per-row ops. One file per op family
// (matmul.cpp, rmsnorm.cpp, rope.cpp, attention.cpp, attention_kv.cpp, swiglu.cpp, embedding.cpp,
// cross_entropy.cpp, lora.cpp, optim.cpp); shared helpers here.
#pragma once
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"

namespace nnpipe::cpu {

// Below this many multiply-adds an op runs on one thread: waking an OpenMP team costs more than
// the work, and on a loaded machine spinning threads slow tiny ops down by orders of magnitude.
inline constexpr int64_t kParallelMin = int64_t{1} << 15;

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCPU; }
  Tensor zeros(DType dtype, std::vector<int64_t> shape) override;
  void zero(Tensor& t) override;
  Tensor to_f32(const Tensor& src) override;
  void copy_bytes(Tensor& dst, const Tensor& src, size_t bytes) override;
  bool supports(std::string_view op, DType dtype) const override;
  using Backend::upload;
  void upload(Tensor& dst, std::span<const uint8_t> host) override;
  void download(std::span<uint8_t> host, const Tensor& t) override;
  void synchronize() override {}
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
  // optim.cpp
  void axpy(Tensor& y, float a, const Tensor& x) override;
  void scale(Tensor& x, float a) override;
  double sq_norm(const Tensor& x) override;
  void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const AdamWStep& s) override;
  void dropout_mask(Tensor& keep, double p, uint64_t seed, uint64_t offset) override;
};

// Typed views of CPU tensors, checking dtype (storage is 64-byte aligned when owned).
inline float* f32(Tensor& t, const char* what) {
  if (t.dtype() != DType::kF32 || t.device() != Device::kCPU)
    fail(ErrorCode::kInvalidArgument, "{}: expected a CPU f32 tensor, got {}", what, t.describe());
  return reinterpret_cast<float*>(t.raw());
}
inline const float* f32(const Tensor& t, const char* what) {
  if (t.dtype() != DType::kF32 || t.device() != Device::kCPU || t.borrowed())
    fail(ErrorCode::kInvalidArgument, "{}: expected an owned CPU f32 tensor, got {}", what,
         t.describe());
  return reinterpret_cast<const float*>(t.raw());
}
inline const int32_t* i32(const Tensor& t, const char* what) {
  if (t.dtype() != DType::kI32 || t.device() != Device::kCPU || t.borrowed())
    fail(ErrorCode::kInvalidArgument, "{}: expected an owned CPU i32 tensor, got {}", what,
         t.describe());
  return reinterpret_cast<const int32_t*>(t.raw());
}
inline bool is_half(DType d) {
  return d == DType::kF16 || d == DType::kBF16;
}
// Converts `count` f16/bf16 values (owned CPU storage of a half tensor, from element `offset`)
// to f32.
void half_to_f32(const Tensor& t, int64_t offset, int64_t count, float* dst);
// Throws unless a and b have the same shape.
void same_shape(const Tensor& a, const Tensor& b, const char* what);

}  // namespace nnpipe::cpu
