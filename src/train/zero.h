// ZeRO-1 (Rajbhandari et al. 2020, stage 1): the AdamW moments sharded across data-parallel ranks.
// The trainable parameters, in the map's (name) order, form one flat index space of N elements;
// rank r owns elements [r*c, min((r+1)*c, N)) with c = ceil(N / world). After the gradients are
// all-reduced (every rank holds the full, clipped gradient), each rank runs the AdamW update on
// its own elements only (views of the parameter tensors) and the updated elements are
// all-gathered into every rank's parameters. The update is element-wise, so the weights are the
// bits an unsharded AdamW gives; the moments take 1/world of the memory.
//
// Checkpoints keep the unsharded format (train/adamw.h's optimizer.safetensors): gather() brings
// the moments to rank 0 for saving, scatter() hands a loaded file's moments back to the owners, so
// a checkpoint resumes with or without ZeRO.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dist/collective.h"
#include "train/adamw.h"

namespace nnpipe {

class ShardedAdamW {
 public:
  ShardedAdamW(Backend& be, AdamWHyper h, dist::Collective& comm,
               const std::map<std::string, Tensor>& params);
  void set_lr(double lr) { h_.lr = lr; }
  // One step: grads[i] and weight_decay[i] belong to the i-th parameter in name order.
  // Collective (all_gather of the updated parameters).
  void step(std::map<std::string, Tensor>& params, std::span<const Tensor> grads,
            std::span<const double> weight_decay);
  // Bytes of the moments this rank holds (2 x its elements x 4).
  int64_t state_bytes() const { return 2 * (end_ - begin_) * 4; }
  int64_t total_elements() const { return n_; }
  // Collective: on rank 0 `full` receives every parameter's moments and step (the plain AdamW
  // state that AdamW::save writes); other ranks leave it untouched.
  void gather(AdamW& full);
  // Collective: rank 0's `full` (a loaded checkpoint) -> each rank's shard. Other ranks pass
  // anything (ignored). Throws kFormat when rank 0's state does not cover every parameter.
  void scatter(const AdamW& full);

 private:
  struct Param {
    std::string name;
    int64_t offset = 0, numel = 0;  // its elements in the flat space
    int64_t lo = 0, hi = 0;         // the elements of it this rank owns (lo == hi: none)
    AdamWState st;                  // moments of [lo, hi)
    int64_t steps = 0;
  };
  // Copies flat elements [a, b) between the parameters and buf (to_buf: params -> buf).
  void copy_flat(std::map<std::string, Tensor>& params, int64_t a, int64_t b, float* buf,
                 bool to_buf);

  Backend& be_;
  AdamWHyper h_;
  dist::Collective& comm_;
  std::vector<Param> params_;
  int64_t n_ = 0, chunk_ = 0, begin_ = 0, end_ = 0;
};

}  // namespace nnpipe
