#include "train/grad_sync.h"

#include <chrono>
#include <cstring>
#include <regex>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe {
namespace {

using clock = std::chrono::steady_clock;

// The layer of "model.layers.3.mlp..." or "base_model.model.model.layers.3...." (-1: none).
int64_t layer_of(const std::string& name) {
  static const std::regex re(R"((^|\.)layers\.(\d+)\.)");
  std::smatch m;
  if (!std::regex_search(name, m, re)) return -1;
  return std::stoll(m[2].str());
}

}  // namespace

GradSync::GradSync(dist::Collective& comm, const std::map<std::string, Tensor>& params,
                   int64_t num_layers, bool overlap, double timeout_s)
    : comm_(comm), overlap_(overlap), timeout_s_(timeout_s) {
  std::vector<std::vector<std::string>> by_layer(static_cast<size_t>(num_layers));
  std::vector<std::string> rest;
  for (const auto& [name, t] : params) {
    const int64_t l = layer_of(name);
    if (l >= 0 && l < num_layers)
      by_layer[static_cast<size_t>(l)].push_back(name);
    else
      rest.push_back(name);
  }
  layer_bucket_.assign(static_cast<size_t>(num_layers), SIZE_MAX);
  for (int64_t l = num_layers - 1; l >= 0; --l)
    if (!by_layer[static_cast<size_t>(l)].empty()) {
      layer_bucket_[static_cast<size_t>(l)] = buckets_.size();
      buckets_.push_back(std::move(by_layer[static_cast<size_t>(l)]));
    }
  if (!rest.empty()) buckets_.push_back(std::move(rest));
  if (overlap_) thread_ = std::thread([this] { run(); });
}

GradSync::~GradSync() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    // Unwinding from an error with a collective in flight: make it fail now rather than wait for
    // the peers' timeout.
    if (pending_ > 0) comm_.cancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

size_t GradSync::bucket_of_layer(int64_t layer) const {
  return layer >= 0 && static_cast<size_t>(layer) < layer_bucket_.size()
             ? layer_bucket_[static_cast<size_t>(layer)]
             : SIZE_MAX;
}

void GradSync::start(size_t bucket, const std::map<std::string, Tensor>& grads) {
  if (bucket != next_)
    fail(ErrorCode::kInternal, "gradient sync: bucket {} started, {} expected", bucket, next_);
  next_ = (next_ + 1) % buckets_.size();
  std::vector<Tensor> ts;
  for (const std::string& n : buckets_[bucket]) ts.push_back(grads.at(n));
  if (!overlap_) {
    reduce(ts);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(ts));
    ++pending_;
  }
  cv_.notify_all();
}

double GradSync::wait() {
  const auto t0 = clock::now();
  if (overlap_) {
    std::unique_lock<std::mutex> lock(mu_);
    // The collectives time out on their own (timeout_s per wait for a peer); this bound only
    // guards against a bug that loses a bucket.
    const auto limit = std::chrono::duration<double>(timeout_s_ * 4 + 60);
    if (!cv_.wait_for(lock, limit, [&] { return pending_ == 0 || error_; }))
      fail(ErrorCode::kInternal, "gradient sync: {} buckets still pending after {:.0f} s", pending_,
           limit.count());
    if (error_) std::rethrow_exception(error_);
  }
  return std::chrono::duration<double>(clock::now() - t0).count();
}

double GradSync::comm_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return comm_s_;
}

// One collective per bucket: the tensors are packed into one buffer (fewer, larger messages).
void GradSync::reduce(const std::vector<Tensor>& ts) {
  const auto t0 = clock::now();
  size_t n = 0;
  for (const Tensor& t : ts) n += static_cast<size_t>(t.numel());
  if (staging_.size() < n) staging_.resize(n);
  size_t at = 0;
  for (const Tensor& t : ts) {
    std::memcpy(staging_.data() + at, t.raw(), t.nbytes());
    at += static_cast<size_t>(t.numel());
  }
  comm_.all_reduce(std::span<float>(staging_.data(), n), dist::ReduceOp::kSum);
  at = 0;
  for (const Tensor& t : ts) {
    Tensor h = t;  // a handle: the copy lands in the gradient's storage
    std::memcpy(h.raw(), staging_.data() + at, t.nbytes());
    at += static_cast<size_t>(t.numel());
  }
  const double s = std::chrono::duration<double>(clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  comm_s_ += s;
}

void GradSync::run() {
  for (;;) {
    std::vector<Tensor> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      if (!error_) reduce(job);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
    }
    cv_.notify_all();
  }
}

}  // namespace nnpipe
