// The op seam: every number the model computes goes through one of these ops, on Tensors that know
// their device. The CPU backend (backend/cpu/) is the fp32 reference; a CUDA backend implements the
// same interface later without touching model or trainer code.
//
// Conventions (llm.c style):
// - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into every input gradient,
//   so residual branches, tied weights and GQA head sharing sum naturally; callers zero gradients.
// - Activations are f32, row-major; N = B*T rows. Ids, positions and lengths are i32.
#pragma once
#include <cstdint>

#include "backend/optim.h"
#include "tensor/tensor.h"

namespace nnpipe {

inline constexpr int32_t kIgnoreIndex = -100;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // --- memory ---
  virtual Tensor zeros(DType dtype, std::vector<int64_t> shape) = 0;
  virtual void zero(Tensor& t) = 0;
  // Any float dtype (f32/f16/bf16, possibly borrowed and unaligned) -> owned f32 on this device.
  virtual Tensor to_f32(const Tensor& src) = 0;

  // --- linear: out (N, O) = x (N, I) W^T (O, I) + b (O); bias may be undefined ---
  // W may be f32, f16 or bf16 (a frozen half-precision base): half rows are converted to f32 in
  // small chunks, never as a whole-matrix copy. Everything else is f32.
  virtual void matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) = 0;
  // dx (N, I) += dout W; dw (O, I) += dout^T x; db (O) += sum_n dout. dx/dw/db may be null
  // (dw null: a frozen weight, only dx is computed).
  virtual void matmul_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dout,
                               const Tensor& x, const Tensor& w) = 0;

  // --- LoRA branch (PEFT): y (N, O) += scale * (x*mask) A^T B^T, A (r, I), B (O, r) f32 ---
  // Dropout: keep (N, I) u8 holds 1 for kept and 0 for dropped inputs, mask = keep * keep_scale
  // (1/(1-p)); u8 rather than f32 masks because one is saved per adapted module and layer.
  // keep null = no dropout. xa (N, r) = (x*mask) A^T is saved for backward.
  virtual void lora_forward(Tensor& y, Tensor& xa, const Tensor& x, const Tensor* keep,
                            float keep_scale, const Tensor& a, const Tensor& b, float scale) = 0;
  // dB += scale * dy^T xa; dxa = scale * dy B; dA += dxa^T (x*mask); dx += mask * (dxa A).
  // dx may be null.
  virtual void lora_backward(Tensor* dx, Tensor& da, Tensor& db, const Tensor& dy, const Tensor& x,
                             const Tensor* keep, float keep_scale, const Tensor& xa,
                             const Tensor& a, const Tensor& b, float scale) = 0;

  // --- RMSNorm: out (N, C) = w * x * rstd, rstd (N) = 1/sqrt(mean(x^2) + eps) (saved) ---
  virtual void rmsnorm(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) = 0;
  virtual void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x,
                                const Tensor& w, const Tensor& rstd) = 0;

  // --- RoPE, NEOX / rotate_half: x (B, T, H, D), positions (B, T) ---
  virtual void rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta) = 0;
  virtual void rope_backward(Tensor& dx, const Tensor& dout, const Tensor& positions,
                             double theta) = 0;

  // --- causal grouped-query attention with per-row valid lengths ---
  // q (B, T, H, D), k/v (B, T, KV, D), lengths (B): query t of row b sees keys j <= t, j < len[b]
  // (transformers' causal + padding mask for right-padded rows). Softmax in fp32; the
  // probabilities att (B, H, T, T) are saved for backward. out (B, T, H, D).
  virtual void attention(Tensor& out, Tensor& att, const Tensor& q, const Tensor& k,
                         const Tensor& v, const Tensor& lengths) = 0;
  virtual void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                  const Tensor& att, const Tensor& q, const Tensor& k,
                                  const Tensor& v) = 0;

  // --- SwiGLU: out (N, F) = silu(gate) * up ---
  virtual void swiglu(Tensor& out, const Tensor& gate, const Tensor& up) = 0;
  virtual void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate,
                               const Tensor& up) = 0;

  // --- embedding: out (N, C) = table (V, C)[ids (N)]; ids out of range throw ---
  // The table may be f32, f16 or bf16 (rows converted); dtable is f32.
  virtual void embedding(Tensor& out, const Tensor& ids, const Tensor& table) = 0;
  virtual void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) = 0;

  // --- cross-entropy over logits (N, V) and targets (N), ignore_index -100 ---
  // Returns the mean over non-ignored targets (0 and count 0 if none) and their count.
  virtual double cross_entropy(const Tensor& logits, const Tensor& targets, int64_t* count) = 0;
  // dlogits += dloss * (softmax(logits) - onehot(target)) / count for non-ignored rows.
  virtual void cross_entropy_backward(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                      float dloss) = 0;

  // --- residual: out = a + b; backward: dst += src (for both inputs) ---
  virtual void add(Tensor& out, const Tensor& a, const Tensor& b) = 0;
  virtual void accumulate(Tensor& dst, const Tensor& src) = 0;

  // --- optimizer, clipping, accumulation, dropout (f32 unless stated; see backend/optim.h) ---
  // y += a * x (element-wise, one rounding per product and one per sum: no fma).
  virtual void axpy(Tensor& y, float a, const Tensor& x) = 0;
  // x *= a.
  virtual void scale(Tensor& x, float a) = 0;
  // sum(x^2) with f64 products and sums over fixed chunks of kSqNormChunk elements, the chunk sums
  // added in order: the same bits for any thread count (a resumed run replays the same clips).
  virtual double sq_norm(const Tensor& x) = 0;
  // One AdamW update in torch's operation order (AdamWStep in backend/optim.h); param, grad and
  // the moments exp_avg/exp_avg_sq have one shape; s.step counts this update (1 on the first).
  virtual void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                          const AdamWStep& s) = 0;
  // keep (any shape, u8) = 1 with probability 1-p, else 0: element i is dropout_keep(p, seed,
  // offset + i) (backend/optim.h), a pure function of its counter, so every backend and thread
  // count draws the same mask. The caller advances offset by keep.numel() per mask.
  virtual void dropout_mask(Tensor& keep, double p, uint64_t seed, uint64_t offset) = 0;
};

// The process-wide CPU backend (stateless; OpenMP + OpenBLAS).
Backend& cpu_backend();

}  // namespace nnpipe
