// Prometheus text exposition for GET /metrics: request and token counters, histograms of time to
// first token, per-token latency (the gaps between consecutive generated tokens), queue wait and
// request duration, fed by the JobResults the scheduler reports, plus gauges read from
// SchedulerStats and the adapter registry at scrape time. Thread-safe.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "server/scheduler.h"

namespace nnpipe::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, ascending (+Inf implied)
  void observe(double v);
  // "# TYPE" line and the _bucket/_sum/_count samples of `name`.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

struct RegistryGauges {
  int64_t adapters = 0, stacks = 0;
  size_t adapter_bytes = 0;
};

class Metrics {
 public:
  Metrics();
  // One HTTP exchange (after the response was written).
  void count_request(const std::string& endpoint, int status);
  // One finished job (on the scheduler thread).
  void record(const JobResult& r);
  std::string render(const SchedulerStats& s, const RegistryGauges& g) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> finished_;  // by finish_reason
  uint64_t prompt_tokens_ = 0, cached_tokens_ = 0, completion_tokens_ = 0;
  Histogram ttft_, token_gap_, queue_, duration_;
};

}  // namespace nnpipe::server
