// The KV cache of one sequence: per layer K and V as (rows, kv_dim) f16 tensors of a backend
// (llama.cpp's default cache type), allocated as the sequence fills: room doubles from
// kKvMinRows positions and is capped at max_rows, keeping the cached rows. Written by
// Backend::kv_write, read by Backend::attention_kv.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace nnpipe {

class Backend;

class KvCache {
 public:
  static constexpr int64_t kKvMinRows = 256;

  KvCache(Backend& backend, int64_t layers, int64_t kv_dim, int64_t max_rows);

  int64_t layers() const { return static_cast<int64_t>(k_.size()); }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t rows() const { return rows_; }  // positions allocated (<= max_rows)
  int64_t max_rows() const { return max_rows_; }
  size_t bytes() const;  // allocated bytes of K and V

  // Room for `rows` positions in every layer, preserving rows [0, keep). Throws
  // kInvalidArgument (naming the size) when the memory is not there; the cache is unchanged then.
  void reserve(int64_t rows, int64_t keep);

  Tensor& k(int64_t layer) { return k_[static_cast<size_t>(layer)]; }  // (rows, kv_dim) f16
  Tensor& v(int64_t layer) { return v_[static_cast<size_t>(layer)]; }
  const Tensor& k(int64_t layer) const { return k_[static_cast<size_t>(layer)]; }
  const Tensor& v(int64_t layer) const { return v_[static_cast<size_t>(layer)]; }

 private:
  Backend* backend_;
  int64_t kv_dim_ = 0, rows_ = 0, max_rows_ = 0;
  std::vector<Tensor> k_, v_;
};

// One sequence's part of a batched step (Backend::kv_write / attention_kv): rows [row0, row0 + n)
// of the step's tensors are its tokens at positions [pos0, pos0 + n) of `cache`.
struct KvSeq {
  KvCache* cache = nullptr;
  int64_t pos0 = 0, row0 = 0, n = 0;
};

}  // namespace nnpipe
