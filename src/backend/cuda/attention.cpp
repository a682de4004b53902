// Attention on the GPU, host side: the training op (attention.cu) and the inference ops over
// KV caches (attention_kv.cu). Lengths are checked on the device (the next synchronize() throws).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace nnpipe::cuda {

namespace {

AttnShape attn_shape(const Tensor& q, const Tensor& k) {
  if (q.ndim() != 4 || k.ndim() != 4)
    fail(ErrorCode::kInvalidArgument, "attention: q {} k {}", q.describe(), k.describe());
  const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2), d = q.dim(3), kv = k.dim(2);
  if (kv <= 0 || h % kv != 0)
    fail(ErrorCode::kInvalidArgument, "attention: {} heads not a multiple of {} kv heads", h, kv);
  return AttnShape{b, t, h, kv, d, 1.0f / std::sqrt(static_cast<float>(d))};
}

}  // namespace

void CudaBackend::attention(Tensor& out, Tensor& att, const Tensor& q, const Tensor& k,
                            const Tensor& v, const Tensor& lengths) {
  const AttnShape sh = attn_shape(q, k);
  check_tensor(q, DType::kF32, {sh.b, sh.t, sh.h, sh.d}, "attention q");
  check_tensor(k, DType::kF32, {sh.b, sh.t, sh.kv, sh.d}, "attention k");
  check_tensor(v, DType::kF32, {sh.b, sh.t, sh.kv, sh.d}, "attention v");
  check_tensor(out, DType::kF32, {sh.b, sh.t, sh.h, sh.d}, "attention out");
  check_tensor(att, DType::kF32, {sh.b, sh.h, sh.t, sh.t}, "attention att");
  check_tensor(lengths, DType::kI32, {sh.b}, "attention lengths");
  attention_fwd(stream_, f32(out, "out"), f32(att, "att"), f32(q, "q"), f32(k, "k"), f32(v, "v"),
                i32(lengths, "lengths"), sh, err_);
}

void CudaBackend::attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                     const Tensor& att, const Tensor& q, const Tensor& k,
                                     const Tensor& v) {
  const AttnShape sh = attn_shape(q, k);
  same_shape(dq, q, "attention_backward dq");
  same_shape(dk, k, "attention_backward dk");
  same_shape(dv, v, "attention_backward dv");
  same_shape(dout, q, "attention_backward dout");
  same_shape(v, k, "attention_backward v");
  check_tensor(att, DType::kF32, {sh.b, sh.h, sh.t, sh.t}, "attention_backward att");
  Tensor ds = scratch(DType::kF32, {sh.b, sh.h, sh.t, sh.t});  // dS
  attention_bwd(stream_, f32(dq, "dq"), f32(dk, "dk"), f32(dv, "dv"), f32(dout, "dout"),
                f32(att, "att"), f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(ds, "ds"), sh);
}

namespace {

void check_cache(const KvCache& cache, int64_t layer, int64_t rows, const char* what) {
  if (layer < 0 || layer >= cache.layers() || rows > cache.rows())
    fail(ErrorCode::kInvalidArgument, "{}: layer {} rows {} of a {}-layer cache of {} rows", what,
         layer, rows, cache.layers(), cache.rows());
  for (const Tensor* t : {&cache.k(layer), &cache.v(layer)}) {
    on_device(*t, what);
    if (t->dtype() != DType::kF16)
      fail(ErrorCode::kInvalidArgument, "{}: a cache of {}", what, t->describe());
  }
}

void check_seq(const KvSeq& s, int64_t rows, const char* what) {
  if (!s.cache || s.n < 0 || s.row0 < 0 || s.row0 + s.n > rows || s.pos0 < 0)
    fail(ErrorCode::kInvalidArgument, "{}: sequence rows [{}, {}) of {}", what, s.row0,
         s.row0 + s.n, rows);
}

}  // namespace

void CudaBackend::kv_write(std::span<const KvSeq> seqs, int64_t layer, const Tensor& k,
                           const Tensor& v) {
  const int64_t N = k.ndim() == 2 ? k.dim(0) : 0;
  for (const KvSeq& s : seqs) {
    check_seq(s, N, "kv_write");
    const int64_t kvd = s.cache->kv_dim();
    check_tensor(k, DType::kF32, {N, kvd}, "kv_write k");
    check_tensor(v, DType::kF32, {N, kvd}, "kv_write v");
    check_cache(*s.cache, layer, s.pos0 + s.n, "kv_write");
  }
  for (const KvSeq& s : seqs) {
    const int64_t kvd = s.cache->kv_dim();
    auto* K = reinterpret_cast<uint16_t*>(s.cache->k(layer).raw()) + s.pos0 * kvd;
    auto* V = reinterpret_cast<uint16_t*>(s.cache->v(layer).raw()) + s.pos0 * kvd;
    f32_to_f16(stream_, K, f32(k, "kv_write k") + s.row0 * kvd, s.n * kvd);
    f32_to_f16(stream_, V, f32(v, "kv_write v") + s.row0 * kvd, s.n * kvd);
  }
}

void CudaBackend::attention_kv(Tensor& out, const Tensor& q, std::span<const KvSeq> seqs,
                               int64_t layer, int64_t heads) {
  const int64_t H = heads;
  if (H <= 0 || q.ndim() != 2 || q.dim(1) % H != 0)
    fail(ErrorCode::kInvalidArgument, "attention_kv: q {} with {} heads", q.describe(), H);
  const int64_t N = q.dim(0), D = q.dim(1) / H;
  check_tensor(out, DType::kF32, {N, H * D}, "attention_kv out");
  if (D > 256)
    fail(ErrorCode::kUnsupported, "attention_kv: head dim {} (the CUDA kernel takes up to 256)", D);
  if (seqs.empty()) return;
  const int64_t kvd = seqs[0].cache ? seqs[0].cache->kv_dim() : 0;
  int64_t max_len = 1;
  std::vector<KvSeqDev> table;
  for (const KvSeq& s : seqs) {
    check_seq(s, N, "attention_kv");
    if (s.cache->kv_dim() != kvd || kvd % D != 0 || H % (kvd / D) != 0)
      fail(ErrorCode::kInvalidArgument, "attention_kv: {} heads of {} vs a cache of {} values", H,
           D, s.cache->kv_dim());
    check_cache(*s.cache, layer, s.pos0 + s.n, "attention_kv");
    max_len = std::max(max_len, s.pos0 + s.n);
    table.push_back(KvSeqDev{reinterpret_cast<const uint16_t*>(s.cache->k(layer).raw()),
                             reinterpret_cast<const uint16_t*>(s.cache->v(layer).raw()), s.pos0,
                             s.row0, s.n});
  }
  const size_t table_bytes = table.size() * sizeof(KvSeqDev);
  Tensor dev_table = scratch(DType::kU8, {static_cast<int64_t>(table_bytes)});
  // Pageable source: the copy is staged before the call returns, so `table` may go.
  NNPIPE_CUDA_CHECK(
      cudaMemcpyAsync(dev_table.raw(), table.data(), table_bytes, cudaMemcpyHostToDevice, stream_));
  Tensor sc = scratch(DType::kF32, {N * H, max_len});  // scores / probabilities per (row, head)
  nnpipe::cuda::attention_kv(stream_, f32(out, "attention_kv out"), f32(q, "attention_kv q"),
                             reinterpret_cast<const KvSeqDev*>(dev_table.raw()),
                             static_cast<int>(table.size()), N, H, kvd / D, D, max_len,
                             f32(sc, "attention_kv scores"));
}

}  // namespace nnpipe::cuda
