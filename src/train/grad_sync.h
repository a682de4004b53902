// Gradient all-reduce for data-parallel training, bucketed by layer and (optionally) overlapped
// with the backward pass: Qwen2Model::backward reports each layer as its gradients become final
// (last layer first), and that layer's bucket is summed across ranks on a comm thread while the
// layers below it are still being differentiated. The embeddings, final norm and lm_head form the
// last bucket (the tied embedding's gradient is final only at the end). Every rank reduces the
// same buckets in the same order, whether or not it ran a backward this step (a rank without a
// micro-batch contributes zeros).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/collective.h"
#include "tensor/tensor.h"

namespace nnpipe {

class GradSync {
 public:
  // Buckets from the parameter names: "...layers.<l>...." -> layer l's bucket, the rest last.
  GradSync(dist::Collective& comm, const std::map<std::string, Tensor>& params, int64_t num_layers,
           bool overlap, double timeout_s);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // Buckets in reduction order: layers num_layers-1 .. 0, then the rest (if any parameter is in
  // no layer).
  size_t buckets() const { return buckets_.size(); }
  const std::vector<std::string>& names(size_t bucket) const { return buckets_[bucket]; }
  size_t bucket_of_layer(int64_t layer) const;
  // Sums bucket b of `grads` (name -> f32 tensor, reduced in place) over the ranks: queued on the
  // comm thread (overlap) or done now. Buckets must be started in order.
  void start(size_t bucket, const std::map<std::string, Tensor>& grads);
  // Waits until every started bucket is reduced (rethrowing the comm thread's error). Returns the
  // seconds waited: the communication the backward did not hide.
  double wait();
  // Seconds spent inside the collectives since construction.
  double comm_seconds() const;

 private:
  void run();
  void reduce(const std::vector<Tensor>& ts);

  dist::Collective& comm_;
  bool overlap_;
  double timeout_s_;
  std::vector<std::vector<std::string>> buckets_;
  std::vector<size_t> layer_bucket_;
  size_t next_ = 0;  // the bucket start() expects
  std::vector<float> staging_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<Tensor>> queue_;
  size_t pending_ = 0;  // queued or running
  bool stop_ = false;
  std::exception_ptr error_;
  double comm_s_ = 0;
  std::thread thread_;
};

}  // namespace nnpipe
