#include "server/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "core/log.h"

namespace nnpipe::server {

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The finish_reason the OpenAI API reports for a Generation's stop reason.
std::string api_reason(const std::string& r) {
  if (r == "eos" || r == "stop_string") return "stop";
  if (r == "max_tokens" || r == "context") return "length";
  return "cancelled";
}

}  // namespace

struct Scheduler::Slot {
  Slot(const engine::Model& m, int64_t n_ctx) : seq(m, n_ctx) {}
  engine::Sequence seq;
  std::vector<int32_t> cached;  // tokens whose K/V the sequence holds, in order
  std::string key;              // AdapterStack::key() they were computed under
  uint64_t used = 0;            // tick_ of its last job
  // The job in progress (null: idle).
  std::shared_ptr<Job> job;
  std::optional<engine::Generation> gen;
  int64_t fed = 0;  // prompt tokens in the cache
  int32_t next = -1;
  Clock::time_point submitted, started, last_token;
  JobResult res;
};

Scheduler::Scheduler(std::shared_ptr<const engine::Model> model, SchedulerOptions opt)
    : model_(std::move(model)), opt_(opt) {
  if (opt_.parallel < 1 || opt_.parallel > 1024)
    fail(ErrorCode::kInvalidArgument, "--parallel {}: must be 1..1024", opt_.parallel);
  if (opt_.chunk < 1)
    fail(ErrorCode::kInvalidArgument, "prompt chunk {}: must be >= 1", opt_.chunk);
  if (opt_.max_queue < 0)
    fail(ErrorCode::kInvalidArgument, "queue bound {}: must be >= 0", opt_.max_queue);
  n_ctx_ = engine::context_size_for(model_->config(), opt_.n_ctx, "--ctx-size");
  for (int i = 0; i < opt_.parallel; ++i) slots_.push_back(std::make_unique<Slot>(*model_, n_ctx_));
  // kGgmlInvariant: a row's logits do not depend on the other rows of the step, so a request's
  // output does not depend on what else is batched with it.
  ev_ = std::make_unique<engine::Evaluator>(model_, Numerics::kGgmlInvariant);
  const ModelConfig& c = model_->config();
  stats_.slots = opt_.parallel;
  stats_.kv_capacity_bytes = static_cast<size_t>(opt_.parallel) * static_cast<size_t>(n_ctx_) *
                             static_cast<size_t>(c.num_hidden_layers * c.kv_dim()) * 2 *
                             sizeof(uint16_t);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Submit Scheduler::submit(std::shared_ptr<Job> job) {
  const int64_t n = static_cast<int64_t>(job->prompt.size());
  if (n == 0)
    fail(ErrorCode::kInvalidArgument, "the prompt is empty: there is nothing to continue");
  if (n >= n_ctx_)
    fail(ErrorCode::kInvalidArgument,
         "the prompt is {} tokens but the context holds {} per request (the prompt and at least "
         "one generated token must fit; the server's --ctx-size)",
         n, n_ctx_);
  if (job->params.max_tokens < 0) fail(ErrorCode::kInvalidArgument, "max_tokens must be >= 0");
  engine::validate(job->params.sampling);
  const int64_t V = model_->vocab_size();
  for (int32_t t : job->prompt)
    if (t < 0 || t >= V)
      fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary (0..{})", t, V - 1);
  {
    std::lock_guard lk(mu_);
    if (draining_ || stop_) return Submit::kDraining;
    if (static_cast<int64_t>(queue_.size()) >= opt_.max_queue &&
        active_ + static_cast<int64_t>(queue_.size()) >= opt_.parallel)
      return Submit::kQueueFull;
    job->submitted_at = Clock::now();
    queue_.push_back(std::move(job));
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_all();
  return Submit::kAccepted;
}

void Scheduler::drain() {
  std::unique_lock lk(mu_);
  draining_ = true;
  idle_cv_.wait(lk, [&] { return (queue_.empty() && active_ == 0) || stop_; });
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty() || active_ > 0; });
      if (stop_) break;
      assign_locked();
    }
    try {
      step();
    } catch (const std::exception& e) {
      // A step that fails (out of memory for a cache, a bug) fails the jobs in it, not the server.
      log::error("serve: a batch step failed: {}", e.what());
      for (auto& s : slots_)
        if (s->job) complete(*s, "error", e.what());
    }
    std::lock_guard lk(mu_);
    if (queue_.empty() && active_ == 0) idle_cv_.notify_all();
  }
  // Shutting down: every job that is left ends "cancelled".
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard lk(mu_);
    left.swap(queue_);
  }
  for (auto& s : slots_)
    if (s->job) complete(*s, "cancelled");
  for (auto& j : left) {
    JobResult r;
    r.finish_reason = "cancelled";
    r.prompt_tokens = static_cast<int64_t>(j->prompt.size());
    if (j->on_done) j->on_done(r);
  }
  idle_cv_.notify_all();
}

// Each queued job goes to the idle slot whose cache shares the longest token prefix computed
// under the same adapter stack, if that prefix is at least half of the prompt; without one, to
// the least recently used slot. The threshold (llama-server's --slot-prompt-similarity 0.5)
// keeps a prompt that shares only its first words with a cache ("Request 1 ..." and
// "Request 2 ...") from overwriting a cache that its own continuation would reuse.
void Scheduler::assign_locked() {
  while (!queue_.empty()) {
    std::shared_ptr<Job>& job = queue_.front();
    const std::string key = job->stack.key();
    Slot* best = nullptr;
    size_t best_common = 0;
    for (auto& s : slots_) {
      if (s->job) continue;
      size_t common = 0;
      if (s->key == key)
        while (common < s->cached.size() && common < job->prompt.size() &&
               s->cached[common] == job->prompt[common])
          ++common;
      if (2 * common < job->prompt.size()) common = 0;
      if (!best || common > best_common || (common == best_common && s->used < best->used)) {
        best = s.get();
        best_common = common;
      }
    }
    if (!best) return;
    Slot& s = *best;
    s.job = std::move(job);
    queue_.pop_front();
    ++active_;
    s.used = ++tick_;
    s.submitted = s.job->submitted_at;
    s.started = Clock::now();
    s.res = JobResult{};
    s.res.prompt_tokens = static_cast<int64_t>(s.job->prompt.size());
    s.res.queue_s = seconds(s.submitted, s.started);
    // KV computed under another stack is never reused; at least the last prompt token is
    // evaluated (its logits start the generation).
    s.seq.set_adapters(s.job->stack.set());
    s.key = key;
    size_t common = std::min<size_t>(best_common, static_cast<size_t>(s.seq.n_past()));
    if (common == s.job->prompt.size()) --common;
    s.seq.truncate(static_cast<int64_t>(common));
    s.cached.resize(common);
    s.fed = static_cast<int64_t>(common);
    s.res.cached_tokens = s.fed;
    s.gen.emplace(*model_, s.job->params, s.job->prompt);
    stats_.cached_tokens += s.fed;
  }
  stats_.queued = static_cast<int64_t>(queue_.size());
  stats_.active = active_;
}

void Scheduler::complete(Slot& s, std::string finish_reason, std::string error) {
  const std::shared_ptr<Job> job = std::move(s.job);
  s.job.reset();
  JobResult& r = s.res;
  if (s.gen) {
    if (finish_reason.empty()) {
      finish_reason = api_reason(s.gen->stop_reason());
      // The rest of the text (held-back bytes that turned out not to start a stop string).
      if (const std::string piece = s.gen->take(); !piece.empty() && job->on_text)
        job->on_text(piece);
    }
    r.text = s.gen->text();
    r.completion_tokens = static_cast<int64_t>(s.gen->tokens().size());
  }
  s.gen.reset();
  r.finish_reason = std::move(finish_reason);
  r.error = std::move(error);
  r.total_s = seconds(s.submitted, Clock::now());
  if (r.finish_reason == "error") {  // the cache may be half written
    s.seq.truncate(0);
    s.cached.clear();
  }
  if (job->on_done) job->on_done(r);
  std::lock_guard lk(mu_);
  --active_;
  stats_.active = active_;
}

void Scheduler::step() {
  // Cancelled jobs leave first; jobs that need no token end at once.
  for (auto& s : slots_) {
    if (!s->job) continue;
    if (s->job->cancel.load())
      complete(*s, "cancelled");
    else if (s->gen->finished())
      complete(*s, "");
  }
  // The step: one token of every decoding slot, and up to opt_.chunk prompt tokens of the
  // prefilling ones (in arrival order), each sequence's rows together; ordered by stack so that
  // the sequences sharing adapters share their LoRA products.
  std::vector<Slot*> order;
  for (auto& s : slots_)
    if (s->job) order.push_back(s.get());
  if (order.empty()) return;
  std::stable_sort(order.begin(), order.end(),
                   [](const Slot* a, const Slot* b) { return a->used < b->used; });
  std::vector<engine::SeqTokens> steps;
  std::vector<Slot*> in_step;
  int64_t budget = opt_.chunk;
  for (Slot* s : order) {
    const int64_t n_prompt = static_cast<int64_t>(s->job->prompt.size());
    if (s->fed < n_prompt) {
      if (budget <= 0) continue;
      const int64_t m = std::min(budget, n_prompt - s->fed);
      budget -= m;
      steps.push_back({&s->seq, s->job->prompt.data() + s->fed, m});
    } else {
      steps.push_back({&s->seq, &s->next, 1});
    }
    in_step.push_back(s);
  }
  // Sort by stack key (stable: arrival order within a stack).
  std::vector<size_t> idx(steps.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return in_step[a]->key < in_step[b]->key; });
  std::vector<engine::SeqTokens> sorted;
  std::vector<Slot*> slots;
  int64_t rows = 0;
  for (size_t i : idx) {
    sorted.push_back(steps[i]);
    slots.push_back(in_step[i]);
    rows += steps[i].n;
  }
  const float* logits = ev_->forward(sorted);
  const int64_t V = model_->vocab_size();
  int64_t prompt_tokens = 0, generated = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    Slot& s = *slots[i];
    const engine::SeqTokens& st = sorted[i];
    s.cached.insert(s.cached.end(), st.tokens, st.tokens + st.n);
    const int64_t n_prompt = static_cast<int64_t>(s.job->prompt.size());
    if (s.fed < n_prompt) {
      s.fed += st.n;
      prompt_tokens += st.n;
      if (s.fed < n_prompt) continue;  // more prompt chunks to come
    }
    const bool more = s.gen->step(std::span<const float>(logits + i * V, static_cast<size_t>(V)));
    ++generated;
    const Clock::time_point now = Clock::now();
    if (s.gen->tokens().size() == 1)
      s.res.ttft_s = seconds(s.submitted, now);
    else
      s.res.token_gaps.push_back(static_cast<float>(seconds(s.last_token, now)));
    s.last_token = now;
    if (!more) {
      complete(s, "");
      continue;
    }
    if (const std::string piece = s.gen->take();
        !piece.empty() && s.job->on_text && !s.job->on_text(piece)) {
      complete(s, "cancelled");
      continue;
    }
    if (s.seq.n_past() >= s.seq.n_ctx()) {
      s.gen->finish("context");
      complete(s, "");
      continue;
    }
    s.next = s.gen->last();
  }
  size_t kv = 0;
  for (auto& s : slots_) kv += s->seq.kv_bytes();
  std::lock_guard lk(mu_);
  ++stats_.steps;
  stats_.last_batch_rows = rows;
  stats_.last_batch_seqs = static_cast<int64_t>(slots.size());
  stats_.prompt_tokens += prompt_tokens;
  stats_.generated_tokens += generated;
  stats_.kv_bytes = kv;
}

}  // namespace nnpipe::server
