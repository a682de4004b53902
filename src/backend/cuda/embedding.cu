// Embedding backward: dtable rows += dout rows scattered by token id. One thread per column walks
// the rows in order (the CPU's order): repeated ids add up without atomics, and the sums are the
// same every run. The forward is a row gather (quant.cu's dequant_rows with ids).
#include "backend/cuda/common.cuh"

namespace nnpipe::cuda {
namespace {

__global__ void embedding_bwd_k(float* dtable, const float* dout, const int32_t* ids, int64_t n,
                                int64_t v, int64_t c, int* err) {
  NNPIPE_GRID_LOOP(i, c) {
    for (int64_t r = 0; r < n; ++r) {
      const int32_t id = ids[r];
      if (id < 0 || id >= v) {
        if (i == 0) atomicOr(err, kErrEmbeddingId);
        continue;
      }
      dtable[id * c + i] += dout[r * c + i];
    }
  }
}

}  // namespace

void embedding_bwd(cudaStream_t s, float* dtable, const float* dout, const int32_t* ids, int64_t n,
                   int64_t v, int64_t c, int* err) {
  if (n <= 0 || c <= 0) return;
  embedding_bwd_k<<<blocks_for(c, 128), 128, 0, s>>>(dtable, dout, ids, n, v, c, err);
  NNPIPE_CUDA_LAUNCHED("embedding_bwd_k");
}

}  // namespace nnpipe::cuda
