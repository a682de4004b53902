// The server's continuous batching on a tiny random model: a request's tokens do not depend on
// what else is in the batch (mixed adapter stacks, prompts split into chunks and interleaved with
// decodes), the prompt cache never serves KV computed under another stack (llama.cpp #26207),
// cancellation frees a slot, the queue bound and draining.
#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "core/rng.h"
#include "engine/lora.h"
#include "io/peft_adapter.h"
#include "model/init_model.h"
#include "server/scheduler.h"
#include "test_util.h"

using namespace nnpipe;
using namespace nnpipe::server;

namespace {

struct Fixture {
  fs::path dir;
  std::shared_ptr<const engine::Model> model;
  std::shared_ptr<const engine::LoraAdapter> lora1, lora2;
};

const Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = fs::temp_directory_path() / fmt::format("nnpipe_scheduler_{}", ::getpid());
    fs::remove_all(f.dir);
    fs::create_directories(f.dir);
    InitModelOptions o;
    o.preset = "tiny";
    o.seed = 9;
    o.out = f.dir / "model";
    init_model(o);
    f.model = engine::Model::load(o.out);
    auto make = [&](const char* name, uint64_t seed, int64_t r) {
      LoraConfig lc;
      lc.r = r;
      lc.lora_alpha = 2.0 * static_cast<double>(r);
      lc.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                           "gate_proj", "up_proj", "down_proj"};
      PeftAdapter a = PeftAdapter::init(f.model->config(), lc, seed);
      Rng rng(seed + 100);
      for (LoraModule& m : a.modules)
        for (float& b : m.B) b = 0.5f * (static_cast<float>(rng.uniform()) - 0.5f);
      a.save(f.dir / name);
      return engine::LoraAdapter::load(f.dir / name, *f.model);
    };
    f.lora1 = make("lora1", 1, 4);
    f.lora2 = make("lora2", 2, 8);
    return f;
  }();
  return f;
}

AdapterStack stack(std::vector<std::pair<int, float>> entries) {
  AdapterStack s;
  for (auto [which, scale] : entries)
    s.entries.push_back({which == 1 ? fixture().lora1 : fixture().lora2, scale,
                         which == 1 ? "digest-1" : "digest-2", which == 1 ? "l1" : "l2"});
  return s;
}

std::vector<int32_t> prompt_ids(int n, int32_t start) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back((start + 13 * i) % 200 + 3);
  return v;
}

// Runs jobs on a scheduler and waits for all of them; returns their results and tokens.
struct Outcome {
  JobResult result;
  std::string streamed;
};

std::vector<Outcome> run_all(Scheduler& sch, const std::vector<std::shared_ptr<Job>>& jobs) {
  std::vector<Outcome> out(jobs.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    jobs[i]->on_text = [&out, i](std::string_view piece) {
      out[i].streamed += piece;
      return true;
    };
    jobs[i]->on_done = [&, i](const JobResult& r) {
      std::lock_guard lk(mu);
      out[i].result = r;
      ++done;
      cv.notify_all();
    };
    EXPECT_EQ(sch.submit(jobs[i]), Submit::kAccepted);
  }
  std::unique_lock lk(mu);
  cv.wait(lk, [&] { return done == jobs.size(); });
  return out;
}

std::shared_ptr<Job> job(std::vector<int32_t> prompt, AdapterStack s, int64_t max_tokens = 12) {
  auto j = std::make_shared<Job>();
  j->prompt = std::move(prompt);
  j->params.max_tokens = max_tokens;
  j->params.ignore_eos = true;
  j->stack = std::move(s);
  return j;
}

std::vector<std::shared_ptr<Job>> mixed_jobs() {
  const std::vector<AdapterStack> stacks = {stack({}), stack({{1, 1.0f}}), stack({{2, 0.7f}}),
                                            stack({{1, 0.5f}, {2, 1.0f}})};
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 10; ++i)
    jobs.push_back(
        job(prompt_ids(5 + 7 * (i % 4), 11 * i), stacks[static_cast<size_t>(i % 4)], 6 + i % 5));
  return jobs;
}

TEST(Scheduler, BatchedOutputsEqualEachRequestAlone) {
  SchedulerOptions batched;
  batched.parallel = 6;
  batched.chunk = 9;  // prompts split into chunks, interleaved with the others' decodes
  Scheduler sch(fixture().model, batched);
  const std::vector<Outcome> together = run_all(sch, mixed_jobs());
  EXPECT_GT(sch.stats().last_batch_seqs, 0);

  SchedulerOptions one;
  one.parallel = 1;
  const std::vector<std::shared_ptr<Job>> jobs = mixed_jobs();
  for (size_t i = 0; i < jobs.size(); ++i) {
    Scheduler alone(fixture().model, one);  // a fresh cache: nothing reused
    const Outcome o = run_all(alone, {jobs[i]})[0];
    EXPECT_EQ(together[i].result.text, o.result.text) << "job " << i;
    EXPECT_EQ(together[i].result.completion_tokens, jobs[i]->params.max_tokens) << "job " << i;
    EXPECT_EQ(together[i].result.finish_reason, "length");
    EXPECT_EQ(together[i].streamed, together[i].result.text) << "job " << i;
  }
}

// llama.cpp #26207: KV computed under adapter A served a request with adapter B. Here the second
// request shares the first one's prompt prefix but not its stack: it must get exactly what it
// gets on a fresh server, and reuse nothing; a third request with the first one's stack reuses
// the prefix and still gets its own fresh output.
TEST(Scheduler, PromptCacheNeverMixesAdapterStacks) {
  SchedulerOptions o;
  o.parallel = 1;  // one slot: every request lands on the same cache
  const std::vector<int32_t> prefix = prompt_ids(24, 5);
  std::vector<int32_t> pa = prefix, pb = prefix;
  pa.push_back(40);
  pb.push_back(41);
  auto fresh = [&](std::vector<int32_t> p, AdapterStack s) {
    Scheduler alone(fixture().model, o);
    return run_all(alone, {job(std::move(p), std::move(s))})[0].result;
  };
  Scheduler sch(fixture().model, o);
  const JobResult a = run_all(sch, {job(pa, stack({{1, 1.0f}}))})[0].result;
  const JobResult b = run_all(sch, {job(pb, stack({{2, 1.0f}}))})[0].result;
  EXPECT_EQ(b.cached_tokens, 0) << "KV of another stack reused";
  EXPECT_EQ(b.text, fresh(pb, stack({{2, 1.0f}})).text);
  // The adapters change the output (else this test could not see a mix-up).
  EXPECT_NE(b.text, fresh(pb, stack({})).text);
  EXPECT_NE(b.text, fresh(pb, stack({{1, 1.0f}})).text);
  // The same adapter under another scale is another stack too.
  const JobResult c = run_all(sch, {job(pb, stack({{2, 0.5f}}))})[0].result;
  EXPECT_EQ(c.cached_tokens, 0);
  EXPECT_EQ(c.text, fresh(pb, stack({{2, 0.5f}})).text);
  // Same stack, same prefix: reused, same output as fresh.
  const JobResult d = run_all(sch, {job(pb, stack({{2, 0.5f}}))})[0].result;
  EXPECT_GE(d.cached_tokens, 24);
  EXPECT_EQ(d.text, c.text);
  // A different file under the same name (another digest) is another stack.
  AdapterStack renamed = stack({{2, 0.5f}});
  renamed.entries[0].digest = "digest-of-another-file";
  const JobResult e = run_all(sch, {job(pb, renamed)})[0].result;
  EXPECT_EQ(e.cached_tokens, 0);
  EXPECT_EQ(a.finish_reason, "length");
}

// A prompt that shares less than half of itself with every cache goes to the least recently used
// slot instead of overwriting the cache its own repeat would reuse (llama-server's
// --slot-prompt-similarity 0.5); one sharing more continues that cache.
TEST(Scheduler, SlotsKeepCachesThatShareOnlyAFewTokens) {
  SchedulerOptions o;
  o.parallel = 2;
  Scheduler sch(fixture().model, o);
  std::vector<int32_t> p1 = prompt_ids(24, 5), p2 = p1, p3 = p1;
  for (size_t i = 3; i < p2.size(); ++i) p2[i] = (p2[i] + 7) % 500 + 1;  // shares 3 tokens
  p3.push_back(40);                                                      // continues p1
  EXPECT_EQ(run_all(sch, {job(p1, stack({}))})[0].result.cached_tokens, 0);
  EXPECT_EQ(run_all(sch, {job(p2, stack({}))})[0].result.cached_tokens, 0);
  EXPECT_EQ(run_all(sch, {job(p1, stack({}))})[0].result.cached_tokens, 23);
  EXPECT_EQ(run_all(sch, {job(p2, stack({}))})[0].result.cached_tokens, 23);
  EXPECT_GE(run_all(sch, {job(p3, stack({}))})[0].result.cached_tokens, 24);
}

TEST(Scheduler, CancelFreesTheSlot) {
  SchedulerOptions o;
  o.parallel = 1;
  Scheduler sch(fixture().model, o);
  auto j = job(prompt_ids(8, 3), stack({}), 1000);
  std::mutex mu;
  std::condition_variable cv;
  std::optional<JobResult> r;
  int pieces = 0;
  j->on_text = [&](std::string_view) { return ++pieces < 3; };  // the client goes away
  j->on_done = [&](const JobResult& res) {
    std::lock_guard lk(mu);
    r = res;
    cv.notify_all();
  };
  ASSERT_EQ(sch.submit(j), Submit::kAccepted);
  {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return r.has_value(); });
  }
  EXPECT_EQ(r->finish_reason, "cancelled");
  EXPECT_LT(r->completion_tokens, 1000);
  // The slot serves the next job.
  const Outcome next = run_all(sch, {job(prompt_ids(6, 4), stack({}), 3)})[0];
  EXPECT_EQ(next.result.completion_tokens, 3);
  // A job cancelled while queued or prefilling ends without a token.
  auto k = job(prompt_ids(8, 3), stack({}), 50);
  k->cancel = true;
  EXPECT_EQ(run_all(sch, {k})[0].result.finish_reason, "cancelled");
}

TEST(Scheduler, LimitsQueueAndDrain) {
  SchedulerOptions o;
  o.parallel = 1;
  o.n_ctx = 256;
  o.max_queue = 1;
  Scheduler sch(fixture().model, o);
  EXPECT_THROW(sch.submit(job(prompt_ids(256, 1), stack({}))), Error) << "prompt fills the context";
  EXPECT_THROW(sch.submit(job({}, stack({}))), Error);
  EXPECT_THROW(sch.submit(job({1, 2, 1 << 30}, stack({}))), Error);
  // A long job holds the slot; one more may wait; the third is refused.
  std::atomic<int> done{0};
  auto counted = [&](int64_t n) {
    auto j = job(prompt_ids(4, 2), stack({}), n);
    j->on_done = [&](const JobResult&) { ++done; };
    return j;
  };
  ASSERT_EQ(sch.submit(counted(240)), Submit::kAccepted);
  while (sch.stats().active == 0) std::this_thread::yield();  // it took the slot
  Submit second = sch.submit(counted(2)), third = sch.submit(counted(2));
  EXPECT_EQ(second, Submit::kAccepted);
  EXPECT_EQ(third, Submit::kQueueFull);
  sch.drain();
  EXPECT_EQ(done.load(), 2);
  EXPECT_EQ(sch.submit(counted(2)), Submit::kDraining);
  // Generation stops when the context fills.
  SchedulerOptions small;
  small.n_ctx = 16;
  Scheduler tight(fixture().model, small);
  const Outcome r = run_all(tight, {job(prompt_ids(10, 1), stack({}), 100)})[0];
  EXPECT_EQ(r.result.finish_reason, "length");
  EXPECT_EQ(r.result.completion_tokens, 7);  // positions 10..15 evaluated, the 7th sampled last
}

}  // namespace
