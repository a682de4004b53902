// Inference attention over f16 KV caches (kGgml numerics, llama.cpp's CPU graph without flash
// attention): q rounded to f16, scores in f32, softmax with a double sum, probabilities rounded
// to f16 before P V. One block per (row, head) of the batched step; the row finds its sequence
// in the small table `seqs`, so a row's result does not depend on the other sequences.
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

constexpr int kMaxHeadDim = 256;

__global__ void f32_to_f16_k(uint16_t* dst, const float* src, int64_t n) {
  NNPIPE_GRID_LOOP(i, n) dst[i] = __half_as_ushort(__float2half_rn(src[i]));
}

__global__ void attention_kv_k(float* out, const float* q, const KvSeqDev* seqs, int nseq,
                               int64_t H, int64_t KV, int64_t D, int64_t max_len, float* scratch) {
  __shared__ float q16[kMaxHeadDim];
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int64_t row = blockIdx.x, hh = blockIdx.y, kvd = KV * D, kh = hh / (H / KV);
  const KvSeqDev* sq = nullptr;
  for (int i = 0; i < nseq; ++i)
    if (row >= seqs[i].row0 && row < seqs[i].row0 + seqs[i].n) sq = &seqs[i];
  if (!sq) return;  // a row of no sequence: left as it is
  const int64_t len = sq->pos0 + (row - sq->row0) + 1;
  const float* qi = q + (row * H + hh) * D;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) q16[e] = round_f16(qi[e]);
  __syncthreads();
  const float scale = 1.0f / sqrtf(static_cast<float>(D));  // IEEE: the CPU's bits
  float* sc = scratch + (row * H + hh) * max_len;           // (len)
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const uint16_t* kj = sq->k + j * kvd + kh * D;
    float s = 0;
    for (int64_t e = 0; e < D; ++e) s += q16[e] * f16_bits_to_f32(kj[e]);
    s *= scale;
    sc[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, shf);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  sum = block_sum(sum, shd);
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) sc[j] = round_f16(sc[j] * inv);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    float o = 0;
    for (int64_t j = 0; j < len; ++j) o += sc[j] * f16_bits_to_f32(sq->v[j * kvd + kh * D + e]);
    out[(row * H + hh) * D + e] = o;
  }
}

}  // namespace

void f32_to_f16(cudaStream_t s, uint16_t* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  f32_to_f16_k<<<blocks_for(n), kThreads, 0, s>>>(dst, src, n);
  NNPIPE_CUDA_LAUNCHED("f32_to_f16_k");
}

void attention_kv(cudaStream_t s, float* out, const float* q, const KvSeqDev* seqs, int nseq,
                  int64_t n_rows, int64_t h, int64_t kv, int64_t d, int64_t max_len,
                  float* scratch) {
  if (n_rows <= 0 || nseq <= 0) return;
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(h));
  attention_kv_k<<<grid, 128, 0, s>>>(out, q, seqs, nseq, h, kv, d, max_len, scratch);
  NNPIPE_CUDA_LAUNCHED("attention_kv_k");
}

}  // namespace nnpipe::cuda
