#include "backend/kv_cache.h"

#include <algorithm>
#include <new>

#include "backend/backend.h"
#include "core/error.h"

namespace nnpipe {

KvCache::KvCache(Backend& backend, int64_t layers, int64_t kv_dim, int64_t max_rows)
    : backend_(&backend), kv_dim_(kv_dim), max_rows_(max_rows) {
  if (layers < 0 || kv_dim <= 0 || max_rows <= 0)
    fail(ErrorCode::kInvalidArgument, "KV cache: {} layers x {} values x {} positions", layers,
         kv_dim, max_rows);
  k_.resize(static_cast<size_t>(layers));
  v_.resize(static_cast<size_t>(layers));
}

size_t KvCache::bytes() const {
  size_t b = 0;
  for (const auto* kv : {&k_, &v_})
    for (const Tensor& t : *kv) b += t.defined() ? t.nbytes() : 0;
  return b;
}

void KvCache::reserve(int64_t rows, int64_t keep) {
  if (rows <= rows_) return;
  const int64_t want = std::min(max_rows_, std::max({rows, 2 * rows_, kKvMinRows}));
  keep = std::clamp<int64_t>(keep, 0, rows_);
  const size_t keep_bytes = static_cast<size_t>(keep * kv_dim_) * 2;
  try {
    // Every new buffer first, then the swap: on failure nothing has changed.
    std::vector<Tensor> nk(k_.size()), nv(v_.size());
    for (size_t l = 0; l < k_.size(); ++l) {
      nk[l] = backend_->zeros(DType::kF16, {want, kv_dim_});
      nv[l] = backend_->zeros(DType::kF16, {want, kv_dim_});
      if (keep_bytes) {
        backend_->copy_bytes(nk[l], k_[l], keep_bytes);
        backend_->copy_bytes(nv[l], v_[l], keep_bytes);
      }
    }
    k_.swap(nk);
    v_.swap(nv);
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::kInvalidArgument,
         "out of memory growing the KV cache to {} positions ({:.0f} MiB): use a smaller context",
         want,
         static_cast<double>(want) * static_cast<double>(kv_dim_) * 4 *
             static_cast<double>(k_.size()) / (1 << 20));
  }
  rows_ = want;
}

}  // namespace nnpipe
