// Training attention (causal GQA with per-row lengths), the straightforward kernels: the
// interface saves the probabilities att (B, H, T, T) for backward, so the forward writes them
// and the backward reads them. One block per (query, head, row) in the forward and for dQ; one
// block per (key, KV head, row) for dK and dV, which sums over the query heads of its group
// itself (no atomics). A flash-style tiled kernel that never stores (B, H, T, T) needs the
// interface to save the log-sum-exp instead: not written yet.
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

__global__ void attention_fwd_k(float* out, float* att, const float* q, const float* k,
                                const float* v, const int32_t* lengths, AttnShape sh, int* err) {
  __shared__ float shf[32];
  const int64_t i = blockIdx.x, hh = blockIdx.y, b = blockIdx.z;
  const int64_t T = sh.t, H = sh.h, KV = sh.kv, D = sh.d, kh = hh / (H / KV);
  float* arow = att + ((b * H + hh) * T + i) * T;  // (T)
  const float* qi = q + ((b * T + i) * H + hh) * D;
  float* oi = out + ((b * T + i) * H + hh) * D;
  const int32_t len = lengths[b];
  if (len < 1 || len > T) {
    if (threadIdx.x == 0 && i == 0 && hh == 0) atomicOr(err, kErrLength);
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) arow[j] = 0;
    for (int64_t e = threadIdx.x; e < D; e += blockDim.x) oi[e] = 0;
    return;
  }
  const int64_t last = i < len - 1 ? i : len - 1;  // keys 0..last are visible
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
    const float* kj = k + ((b * T + j) * KV + kh) * D;
    float s = 0;
    for (int64_t e = 0; e < D; ++e) s += qi[e] * kj[e];
    s *= sh.scale;
    arow[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, shf);
  float sum = 0;
  for (int64_t j = threadIdx.x; j <= last; j += blockDim.x) {
    const float p = expf(arow[j] - mx);
    arow[j] = p;
    sum += p;
  }
  sum = block_sum(sum, shf);
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) arow[j] = j <= last ? arow[j] * inv : 0.0f;
  __syncthreads();
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    float o = 0;
    for (int64_t j = 0; j <= last; ++j) o += arow[j] * v[((b * T + j) * KV + kh) * D + e];
    oi[e] = o;
  }
}

// dP = dO V^T, dS = P * (dP - rowsum(dP * P)) * scale (into ds), dQ += dS K.
__global__ void attention_dq_k(float* dq, float* ds, const float* dout, const float* att,
                               const float* k, const float* v, AttnShape sh) {
  __shared__ float shf[32];
  const int64_t i = blockIdx.x, hh = blockIdx.y, b = blockIdx.z;
  const int64_t T = sh.t, H = sh.h, KV = sh.kv, D = sh.d, kh = hh / (H / KV);
  const float* prow = att + ((b * H + hh) * T + i) * T;
  float* drow = ds + ((b * H + hh) * T + i) * T;
  const float* gi = dout + ((b * T + i) * H + hh) * D;
  float dot = 0;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    const float* vj = v + ((b * T + j) * KV + kh) * D;
    float dp = 0;
    for (int64_t e = 0; e < D; ++e) dp += gi[e] * vj[e];
    drow[j] = dp;
    dot += dp * prow[j];
  }
  dot = block_sum(dot, shf);
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x)
    drow[j] = prow[j] * (drow[j] - dot) * sh.scale;
  __syncthreads();
  float* dqi = dq + ((b * T + i) * H + hh) * D;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    float acc = 0;
    for (int64_t j = 0; j < T; ++j) acc += drow[j] * k[((b * T + j) * KV + kh) * D + e];
    dqi[e] += acc;
  }
}

// dK_j += sum over the group's heads and queries of dS[., j] Q; dV_j += P[., j] dO.
__global__ void attention_dkv_k(float* dk, float* dv, const float* ds, const float* att,
                                const float* q, const float* dout, AttnShape sh) {
  const int64_t j = blockIdx.x, kh = blockIdx.y, b = blockIdx.z;
  const int64_t T = sh.t, H = sh.h, KV = sh.kv, D = sh.d, rep = H / KV;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    float ak = 0, av = 0;
    for (int64_t r = 0; r < rep; ++r) {
      const int64_t hh = kh * rep + r;
      for (int64_t i = j; i < T; ++i) {  // causal: query i >= j (earlier ones have P = 0)
        const int64_t a = ((b * H + hh) * T + i) * T + j;
        const int64_t qo = ((b * T + i) * H + hh) * D + e;
        ak += ds[a] * q[qo];
        av += att[a] * dout[qo];
      }
    }
    dk[((b * T + j) * KV + kh) * D + e] += ak;
    dv[((b * T + j) * KV + kh) * D + e] += av;
  }
}

}  // namespace

void attention_fwd(cudaStream_t s, float* out, float* att, const float* q, const float* k,
                   const float* v, const int32_t* lengths, const AttnShape& sh, int* err) {
  if (sh.b * sh.t * sh.h <= 0) return;
  const dim3 grid(static_cast<unsigned>(sh.t), static_cast<unsigned>(sh.h),
                  static_cast<unsigned>(sh.b));
  attention_fwd_k<<<grid, 128, 0, s>>>(out, att, q, k, v, lengths, sh, err);
  NNPIPE_CUDA_LAUNCHED("attention_fwd_k");
}

void attention_bwd(cudaStream_t s, float* dq, float* dk, float* dv, const float* dout,
                   const float* att, const float* q, const float* k, const float* v, float* ds,
                   const AttnShape& sh) {
  if (sh.b * sh.t * sh.h <= 0) return;
  const dim3 gq(static_cast<unsigned>(sh.t), static_cast<unsigned>(sh.h),
                static_cast<unsigned>(sh.b));
  attention_dq_k<<<gq, 128, 0, s>>>(dq, ds, dout, att, k, v, sh);
  NNPIPE_CUDA_LAUNCHED("attention_dq_k");
  const dim3 gk(static_cast<unsigned>(sh.t), static_cast<unsigned>(sh.kv),
                static_cast<unsigned>(sh.b));
  attention_dkv_k<<<gk, 128, 0, s>>>(dk, dv, ds, att, q, dout, sh);
  NNPIPE_CUDA_LAUNCHED("attention_dkv_k");
}

}  // namespace nnpipe::cuda
