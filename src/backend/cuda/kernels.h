// The launchers of the CUDA kernels (one .cu per op family), called by the CudaBackend's host
// code (cuda_backend.cpp, matmul.cpp, layers.cpp, attention.cpp) after it has checked shapes and
// dtypes. Raw device pointers, element counts and the stream; every launcher enqueues work and
// returns without synchronising. Bad data that only the device sees (token ids, targets,
// lengths out of range) sets a bit of `err` (a device int), which CudaBackend::synchronize()
// reads and turns into an exception.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/optim.h"

namespace nnpipe::cuda {

// Bits of the device error word.
enum ErrBit : int { kErrEmbeddingId = 1, kErrTarget = 2, kErrLength = 4 };

// Weight / table element types the kernels read (the DTypes of supports()).
enum class KType : int {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K
};

// --- elementwise.cu ---
void add_f32(cudaStream_t s, float* out, const float* a, const float* b, int64_t n);
void accumulate_f32(cudaStream_t s, float* dst, const float* src, int64_t n);  // dst += src
// y (n, o) += b (o)
void add_bias_f32(cudaStream_t s, float* y, const float* b, int64_t n, int64_t o);
// db (o) += sum over the n rows of g (n, o), rows in order (the CPU's order).
void bias_grad_f32(cudaStream_t s, float* db, const float* g, int64_t n, int64_t o);
void axpy_f32(cudaStream_t s, float* y, float a, const float* x, int64_t n);  // y += a * x
void scale_f32(cudaStream_t s, float* x, float a, int64_t n);
// out = keep ? x * keep_scale : 0 (LoRA dropout).
void apply_keep(cudaStream_t s, float* out, const float* x, const uint8_t* keep, float keep_scale,
                int64_t n);
// dx += keep ? keep_scale * d : 0
void accumulate_keep(cudaStream_t s, float* dx, const float* d, const uint8_t* keep,
                     float keep_scale, int64_t n);
// dst (n) f32 = src (n) of type t (F32/F16/BF16).
void half_to_f32(cudaStream_t s, KType t, const void* src, float* dst, int64_t n);
// SwiGLU (elementwise.cu too): out = silu(g) * u; backward accumulates.
void swiglu_fwd(cudaStream_t s, float* out, const float* g, const float* u, int64_t n);
void swiglu_bwd(cudaStream_t s, float* dg, float* du, const float* dout, const float* g,
                const float* u, int64_t n);

// --- optim.cu ---
void adamw(cudaStream_t s, float* p, const float* g, float* m, float* v, int64_t n,
           const AdamWConsts& k);
void dropout_mask(cudaStream_t s, uint8_t* keep, int64_t n, uint64_t threshold, uint64_t seed,
                  uint64_t offset);
// partials (chunks) = f64 sums of x^2 over chunks of `chunk` elements; out[0] = their in-order sum.
void sq_norm(cudaStream_t s, const float* x, int64_t n, int64_t chunk, double* partials,
             double* out);

// --- quant.cu: GGML blocks and ggml's activation conversion ---
// dst (rows, cols) f32 = rows of src (a matrix of type t, row_bytes per row): row i is
// ids[i] when ids is given (out-of-range ids set kErrEmbeddingId and give zeros), else r0 + i.
void dequant_rows(cudaStream_t s, KType t, const uint8_t* src, int64_t row_bytes, int64_t cols,
                  const int32_t* ids, int64_t vocab, int64_t r0, int64_t rows, float* dst,
                  int* err);
// out (rows, cols) = x converted to the activation type of a weight of type t and back to f32
// (F16/BF16: rounded; Q8_0 blocks for Q4_0/Q5_0/Q8_0, Q8_1 (the same values) for Q4_1/Q5_1,
// Q8_K for the K-quants; F32: a copy).
void round_activations(cudaStream_t s, KType t, const float* x, float* out, int64_t rows,
                       int64_t cols);
// y (n, o) [row stride ldy] = x (n, k) w^T (o, k), one warp per output in a fixed order:
// a row's result does not depend on n (kGgmlInvariant).
void rowdot(cudaStream_t s, const float* x, const float* w, float* y, int64_t n, int64_t o,
            int64_t k, int64_t ldy);

// --- rmsnorm.cu ---
void rmsnorm_fwd(cudaStream_t s, float* out, float* rstd, const float* x, const float* w, int64_t n,
                 int64_t c, float eps, bool ggml);
void rmsnorm_bwd(cudaStream_t s, float* dx, float* dw, const float* dout, const float* x,
                 const float* w, const float* rstd, int64_t n, int64_t c);

// --- rope.cu ---
inline constexpr int kRopeMaxHalf = 256;
struct RopeFreqs {
  float inv[kRopeMaxHalf];  // kTorch: transformers' inv_freq table (computed on the host)
  float theta_scale;        // kGgml: theta^(-2/d)
};
enum class RopeMode : int { kTorch, kTorchBackward, kGgml };
// x, out (bt, h, d); positions (bt). kTorchBackward accumulates the transposed rotation.
void rope(cudaStream_t s, float* out, const float* x, const int32_t* pos, int64_t bt, int64_t h,
          int64_t d, const RopeFreqs& f, RopeMode mode);

// --- embedding.cu ---
// dtable (v, c) += dout (n, c) rows scattered by ids, each column summed in row order.
void embedding_bwd(cudaStream_t s, float* dtable, const float* dout, const int32_t* ids, int64_t n,
                   int64_t v, int64_t c, int* err);

// --- cross_entropy.cu ---
// loss[0..1] = {mean over non-ignored rows of lse - x[target], count}; row_loss (n) f64 scratch.
void cross_entropy_fwd(cudaStream_t s, double* loss, const float* logits, const int32_t* targets,
                       int64_t n, int64_t v, double* row_loss, int* err);
// dlogits += dloss * (softmax - onehot) / count; count (1) f64 scratch.
void cross_entropy_bwd(cudaStream_t s, float* dlogits, const float* logits, const int32_t* targets,
                       int64_t n, int64_t v, float dloss, double* count, int* err);

// --- attention.cu (training, kTorch) ---
struct AttnShape {
  int64_t b, t, h, kv, d;
  float scale;
};
// att (B, H, T, T) probabilities, out (B, T, H, D).
void attention_fwd(cudaStream_t s, float* out, float* att, const float* q, const float* k,
                   const float* v, const int32_t* lengths, const AttnShape& sh, int* err);
// ds (B, H, T, T) scratch.
void attention_bwd(cudaStream_t s, float* dq, float* dk, float* dv, const float* dout,
                   const float* att, const float* q, const float* k, const float* v, float* ds,
                   const AttnShape& sh);

// --- attention_kv.cu (inference, kGgml) ---
struct KvSeqDev {
  const uint16_t* k;  // this layer's cache rows (rows, kvd) f16
  const uint16_t* v;
  int64_t pos0, row0, n;
};
// dst (n) f16 bits = src (n) f32 rounded to nearest even.
void f32_to_f16(cudaStream_t s, uint16_t* dst, const float* src, int64_t n);
// out (N, H*D) for q (N, H*D); seqs on the device; scratch >= N * H * max_len floats.
void attention_kv(cudaStream_t s, float* out, const float* q, const KvSeqDev* seqs, int nseq,
                  int64_t n_rows, int64_t h, int64_t kv, int64_t d, int64_t max_len,
                  float* scratch);

}  // namespace nnpipe::cuda
