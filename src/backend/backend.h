// The op seam: every number the model computes goes through one of these ops, on Tensors that know
// their device. Both drivers use it: the trainer (model/qwen2*.cpp, train/) and the inference
// engine (engine/context.cpp). The CPU backend (backend/cpu/) is the reference; a CUDA backend
// implements the same interface without touching model, trainer or engine code.
//
// Conventions (llm.c style):
// - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into every input gradient,
//   so residual branches, tied weights and GQA head sharing sum naturally; callers zero gradients.
// - Activations are f32, row-major; N = B*T rows. Ids, positions and lengths are i32.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "backend/kv_cache.h"
#include "backend/optim.h"
#include "tensor/tensor.h"

namespace nnpipe {

inline constexpr int32_t kIgnoreIndex = -100;

// Numerics of the ops where training and inference follow different references:
// kTorch: transformers/PEFT in fp32 (training must equal them step for step);
// kGgml: llama.cpp's CPU graph (the engine's greedy outputs must equal llama.cpp's): activations
// converted to the weight type's dot-product type (f16/bf16/Q8_0/Q8_1/Q8_K) before the products,
// RMSNorm summing squares in double, RoPE angles by repeated f32 multiplication.
// kGgmlInvariant: kGgml with every row of a matmul or LoRA product computed as ggml's vec_dot
// computes it (never the dequantize + sgemm path that long batches take otherwise), so a row's
// result does not depend on how many rows share the call: the server's continuous batching needs
// this for a request's output not to depend on what else is batched with it.
// kTorchBf16 (matmul and matmul_backward only; opt-in LoRA training, `matmul_dtype: bf16`): kTorch,
// except that a bf16 weight's products take the other operand (x; dout for dx) rounded to bf16
// (nearest even), as torch does for a model loaded in bf16, with f32 accumulation. f32/f16
// weights and the weight gradient are as kTorch. The CPU runs vdpbf16ps where the CPU has
// AVX512_BF16, else the same rounding then the f32 path (same numerics, another summation order).
enum class Numerics { kTorch, kGgml, kGgmlInvariant, kTorchBf16 };

// One adapter of a stack applied to one row range of a batch (lora_apply_rows): what lora_apply
// takes, plus the rows.
struct LoraRows {
  int64_t row0 = 0, n = 0;
  const Tensor* a = nullptr;
  const Tensor* b = nullptr;
  const Tensor* bt = nullptr;  // may be null
  float scale = 0.0f;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // --- memory ---
  virtual Tensor zeros(DType dtype, std::vector<int64_t> shape) = 0;
  virtual void zero(Tensor& t) = 0;
  // Any float dtype (f32/f16/bf16, possibly borrowed and unaligned) -> owned f32 on this device.
  virtual Tensor to_f32(const Tensor& src) = 0;
  // The first `bytes` bytes of src's storage into dst's (growing a cache keeps its rows).
  virtual void copy_bytes(Tensor& dst, const Tensor& src, size_t bytes) = 0;
  // Whether this backend runs `op` (its name in this header) with weights of `dtype`.
  virtual bool supports(std::string_view op, DType dtype) const = 0;
  // Host <-> device: upload copies dst.nbytes() host bytes into a tensor of this device;
  // download copies t's nbytes() bytes to the host after the work queued before it; synchronize
  // waits for all queued work (the CPU backend queues nothing). Results stay on the device until
  // downloaded: a GPU backend's step syncs only where its driver asks for a number (the loss
  // when it is logged, the logits when a token is sampled).
  virtual void upload(Tensor& dst, std::span<const uint8_t> host) = 0;
  virtual void download(std::span<uint8_t> host, const Tensor& t) = 0;
  virtual void synchronize() = 0;
  // An owned copy of a host tensor (any dtype, borrowed and unaligned bytes included) here.
  Tensor upload(const Tensor& host) {
    Tensor t = zeros(host.dtype(), host.shape());
    upload(t, host.bytes());
    return t;
  }

  // --- linear: out (N, O) = x (N, I) W^T (O, I) + b (O); bias may be undefined ---
  // kTorch: W may be f32, f16 or bf16 (a frozen half-precision base): half rows are converted to
  // f32 in small chunks, never as a whole-matrix copy; the products are exact f32.
  // kGgml: W may be any type supports("matmul", dtype) accepts (F32/F16/BF16 and the GGML block
  // types, borrowed from a GGUF mapping); x is converted to W's activation type first and the
  // decode (few rows) or prompt kernels are chosen inside. Everything else is f32.
  virtual void matmul(Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias,
                      Numerics num = Numerics::kTorch) = 0;
  // y (N, O) += b (O): a bias added after other terms (the engine adds LoRA terms first).
  virtual void add_bias(Tensor& y, const Tensor& b) = 0;
  // dx (N, I) += dout W; dw (O, I) += dout^T x; db (O) += sum_n dout. dx/dw/db may be null
  // (dw null: a frozen weight, only dx is computed). num: kTorch or kTorchBf16 (dx only).
  virtual void matmul_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dout,
                               const Tensor& x, const Tensor& w,
                               Numerics num = Numerics::kTorch) = 0;

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

  // --- LoRA at inference (kGgml numerics): y (N, O) += scale * (x A^T) B^T ---
  // A (r, I) and B (O, r) of any matmul type; xa (>= N*r f32) is scratch. bt (r, O) f32, when
  // defined, is B transposed (F32/F16/BF16 B only): x A^T is then rounded to B's activation type
  // and multiplied by bt as r axpys or one sgemm, which beats O dots of length r.
  // kGgmlInvariant: every row's products as when the row is alone (no sgemm paths).
  virtual void lora_apply(Tensor& y, Tensor& xa, const Tensor& x, const Tensor& a, const Tensor& b,
                          const Tensor* bt, float scale, Numerics num = Numerics::kGgml) = 0;
  // Many stacks in one call (Punica's segmented gather; the server's mixed-adapter batches): for
  // each item in order, y rows [row0, row0 + n) += lora_apply's product for x's same rows. The
  // items of one row range (its stack) are adjacent; ranges ascend and do not overlap, so they
  // run concurrently. xa holds >= sum over ranges of (n * max rank + 16) f32. Each row's result
  // has the bits of lora_apply on that range alone.
  virtual void lora_apply_rows(Tensor& y, Tensor& xa, const Tensor& x,
                               std::span<const LoraRows> items, Numerics num = Numerics::kGgml) = 0;

  // --- RMSNorm: out (N, C) = w * x * rstd, rstd (N) = 1/sqrt(mean(x^2) + eps) (saved) ---
  // kGgml: squares summed in double and out = (x * rstd) * w (ggml_rms_norm then ggml_mul).
  virtual void rmsnorm(Tensor& out, Tensor& rstd, const Tensor& x, const Tensor& w, float eps,
                       Numerics num = Numerics::kTorch) = 0;
  virtual void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dout, const Tensor& x,
                                const Tensor& w, const Tensor& rstd) = 0;

  // --- RoPE, NEOX / rotate_half: x (B, T, H, D), positions (B, T); out may be x ---
  // kTorch: angle = pos * inv_freq[i] (transformers' f32 table); kGgml: angle_i =
  // pos * theta_scale^i by repeated f32 multiplication (llama.cpp's rope cache).
  virtual void rope(Tensor& out, const Tensor& x, const Tensor& positions, double theta,
                    Numerics num = Numerics::kTorch) = 0;
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

  // --- attention over KV caches (inference, kGgml numerics), several sequences per call ---
  // A batched forward stacks the new tokens of several sequences: rows [row0, row0 + n) of
  // q/k/v/out are one sequence's tokens at positions [pos0, pos0 + n) of its own cache, so
  // sequences of different lengths (continuous batching) share every other op of the step.
  // kv_write: k/v (N, KV*D) f32 -> each cache's rows [pos0, pos0 + n) of `layer`, rounded to f16.
  virtual void kv_write(std::span<const KvSeq> seqs, int64_t layer, const Tensor& k,
                        const Tensor& v) = 0;
  // out (N, H*D) for q (N, H*D): query i of a sequence sees its cache rows [0, pos0 + i]. q and the
  // probabilities are rounded to f16 as ggml does for an f16 cache, softmax in f32 with a double
  // sum. A row's result does not depend on the other sequences of the call.
  virtual void attention_kv(Tensor& out, const Tensor& q, std::span<const KvSeq> seqs,
                            int64_t layer, int64_t heads) = 0;
  // One sequence: all rows of k/v (q/out) at positions [pos0, pos0 + rows).
  void kv_write(KvCache& cache, int64_t layer, int64_t pos0, const Tensor& k, const Tensor& v) {
    const KvSeq s{&cache, pos0, 0, k.dim(0)};
    kv_write(std::span<const KvSeq>(&s, 1), layer, k, v);
  }
  void attention_kv(Tensor& out, const Tensor& q, KvCache& cache, int64_t layer, int64_t pos0,
                    int64_t heads) {
    const KvSeq s{&cache, pos0, 0, q.dim(0)};
    attention_kv(out, q, std::span<const KvSeq>(&s, 1), layer, heads);
  }

  // --- SwiGLU: out (N, F) = silu(gate) * up ---
  virtual void swiglu(Tensor& out, const Tensor& gate, const Tensor& up) = 0;
  virtual void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate,
                               const Tensor& up) = 0;

  // --- embedding: out (N, C) = table (V, C)[ids (N)]; ids out of range throw ---
  // The table may be f32, f16, bf16 or a GGML block type (rows dequantized); dtable is f32.
  virtual void embedding(Tensor& out, const Tensor& ids, const Tensor& table) = 0;
  virtual void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) = 0;

  // --- cross-entropy over logits (N, V) and targets (N), ignore_index -100 ---
  // loss (2) f64 on the device = {the mean over non-ignored targets, their count} (0, 0 if
  // none); download it when the number is needed.
  virtual void cross_entropy(Tensor& loss, const Tensor& logits, const Tensor& targets) = 0;
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
