// Continuous batching for `nnpipe serve`: up to `parallel` sequences (slots) advance together, one
// forward per step over the base weights for every row, each row with its own adapter stack. New
// jobs join between steps; prompts are fed in chunks so that a long prompt never stalls the
// decodes of the others. A slot's KV cache is reused by the next job that shares its token prefix
// AND its adapter stack's identity (AdapterStack::key(), content digests): KV computed under one
// stack never serves another. One scheduler thread runs the steps; submit() and the callbacks are
// the only contact with the HTTP threads.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/context.h"
#include "engine/generation.h"
#include "engine/model.h"
#include "server/adapter_stack.h"

namespace nnpipe::server {

struct JobResult {
  // "stop" (an end-of-generation token or a stop string), "length" (max_tokens, or the context
  // filled up), "cancelled" (the client went away, or the server is shutting down), "error".
  std::string finish_reason;
  std::string error;  // when finish_reason is "error"
  std::string text;   // everything generated (also what on_text streamed)
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double queue_s = 0;             // submit -> the job took a slot
  double ttft_s = 0;              // submit -> first generated token
  double total_s = 0;             // submit -> done
  std::vector<float> token_gaps;  // seconds between consecutive generated tokens
};

struct Job {
  std::vector<int32_t> prompt;  // token ids (the chat template already applied)
  engine::GenerateParams params;
  AdapterStack stack;
  // On the scheduler thread, with UTF-8-safe pieces (stop strings held back until they cannot
  // match). Must not block. Return false to cancel.
  std::function<bool(std::string_view piece)> on_text;
  // Exactly once per accepted job, on the scheduler thread.
  std::function<void(const JobResult&)> on_done;
  // Set from any thread (client disconnected): the job ends at the next step with "cancelled"
  // and its slot is free for the next job.
  std::atomic<bool> cancel{false};
  std::chrono::steady_clock::time_point submitted_at;  // set by submit()
};

struct SchedulerOptions {
  int parallel = 4;     // slots decoded together
  int64_t n_ctx = 0;    // positions per slot (0: min(4096, the model's context length))
  int64_t chunk = 256;  // prompt tokens per step for all prefilling slots together
  int max_queue = 64;   // jobs waiting for a slot beyond which submit() refuses
};

struct SchedulerStats {
  int64_t slots = 0, active = 0, queued = 0;
  int64_t last_batch_rows = 0, last_batch_seqs = 0;  // the last step's forward
  int64_t steps = 0, prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0;
  size_t kv_bytes = 0, kv_capacity_bytes = 0;  // allocated now / if every slot filled n_ctx
};

enum class Submit { kAccepted, kQueueFull, kDraining };

class Scheduler {
 public:
  Scheduler(std::shared_ptr<const engine::Model> model, SchedulerOptions opt);
  ~Scheduler();  // cancels what is left (on_done "cancelled") and joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const engine::Model& model() const { return *model_; }
  int64_t n_ctx() const { return n_ctx_; }

  // Queues a job. Throws kInvalidArgument (the message states the limits) when the prompt is
  // empty or prompt + 1 does not fit n_ctx, or the sampling parameters are out of range.
  Submit submit(std::shared_ptr<Job> job);
  // Refuses new jobs (kDraining), lets queued and running ones finish, returns when idle.
  void drain();
  SchedulerStats stats() const;

 private:
  struct Slot;
  void loop();
  // Gives queued jobs the idle slots (under mu_); returns false when there is nothing to do.
  void assign_locked();
  void step();
  void complete(Slot& s, std::string finish_reason, std::string error = {});

  std::shared_ptr<const engine::Model> model_;
  SchedulerOptions opt_;
  int64_t n_ctx_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool draining_ = false, stop_ = false;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::unique_ptr<engine::Evaluator> ev_;
  int64_t active_ = 0;  // slots with a job (under mu_)
  uint64_t tick_ = 0;   // slot recency for the cache's replacement choice
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace nnpipe::server
