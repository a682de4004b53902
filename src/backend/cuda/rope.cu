// RoPE, NEOX / rotate_half: one block per (row, position), the cos/sin of its angles in shared
// memory, then every (head, pair). kTorch takes transformers' f32 inv_freq table (computed on the
// host as the CPU backend does); kGgml builds angles by repeated f32 multiplication as
// llama.cpp's rope cache does (a serial loop per position: the order is the point).
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

__global__ void rope_k(float* out, const float* x, const int32_t* pos, int64_t h, int64_t d,
                       RopeFreqs f, RopeMode mode) {
  __shared__ float cs[kRopeMaxHalf], sn[kRopeMaxHalf];
  const int64_t half = d / 2, bt = blockIdx.x;
  const float p = static_cast<float>(pos[bt]);
  if (mode == RopeMode::kGgml) {
    if (threadIdx.x == 0) {
      float ang = p;
      for (int64_t i = 0; i < half; ++i) {
        cs[i] = cosf(ang);
        sn[i] = sinf(ang);
        ang *= f.theta_scale;
      }
    }
  } else {
    const float sign = mode == RopeMode::kTorchBackward ? -1.0f : 1.0f;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const float ang = p * f.inv[i];
      cs[i] = cosf(ang);
      sn[i] = sign * sinf(ang);
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < h * half; e += blockDim.x) {
    const int64_t hh = e / half, i = e % half;
    const int64_t off = (bt * h + hh) * d;  // (D)
    const float a = x[off + i], c = x[off + i + half];
    if (mode == RopeMode::kGgml) {
      out[off + i] = a * cs[i] - c * sn[i];
      out[off + i + half] = a * sn[i] + c * cs[i];
    } else {
      const float y0 = a * cs[i] - c * sn[i];
      const float y1 = c * cs[i] + a * sn[i];
      if (mode == RopeMode::kTorchBackward) {
        out[off + i] += y0;
        out[off + i + half] += y1;
      } else {
        out[off + i] = y0;
        out[off + i + half] = y1;
      }
    }
  }
}

}  // namespace

void rope(cudaStream_t s, float* out, const float* x, const int32_t* pos, int64_t bt, int64_t h,
          int64_t d, const RopeFreqs& f, RopeMode mode) {
  if (bt <= 0) return;
  rope_k<<<static_cast<unsigned>(bt), 128, 0, s>>>(out, x, pos, h, d, f, mode);
  NNPIPE_CUDA_LAUNCHED("rope_k");
}

}  // namespace nnpipe::cuda
