#include "pipeline/inference_step.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"

namespace nnpipe {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

json adapters_json(const engine::AdapterSet& set) {
  json a = json::array();
  for (const engine::AdapterRef& r : set)
    a.push_back({{"path", r.adapter->origin()},
                 {"scale", r.scale},
                 {"rank", r.adapter->rank()},
                 {"alpha", r.adapter->alpha()},
                 {"tensors", r.adapter->num_pairs()}});
  return a;
}

json bench(engine::Session& s, const InferenceParams& p) {
  const int64_t V = s.model().vocab_size();
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  json out = json::object();
  const int reps = p.bench_reps;
  // Each timed run starts from an empty cache, so the tokens of one run must fit the context.
  for (auto [flag, n] : {std::pair{"--bench-pp", p.bench_pp}, std::pair{"--bench-tg", p.bench_tg}})
    if (n > s.n_ctx())
      fail(ErrorCode::kInvalidArgument,
           "{} {}: more tokens than the context holds ({}; raise --ctx-size, up to the model's "
           "context length {})",
           flag, n, s.n_ctx(), s.model().config().max_position_embeddings);
  if (p.bench_pp > 0) {
    std::vector<int32_t> prompt(static_cast<size_t>(p.bench_pp));
    for (auto& t : prompt) t = tok(rng);
    std::vector<double> ts;
    for (int r = -1; r < reps; ++r) {  // r = -1: warm-up
      s.context().truncate(0);
      auto t0 = Clock::now();
      for (int64_t i = 0; i < p.bench_pp; i += 512)
        s.context().forward(prompt.data() + i, std::min<int64_t>(512, p.bench_pp - i));
      double sec = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r >= 0) ts.push_back(static_cast<double>(p.bench_pp) / sec);
    }
    out["pp"] = {{"tokens", p.bench_pp}, {"tok_s", median(ts)}, {"runs", ts}};
  }
  if (p.bench_tg > 0) {
    std::vector<double> ts;
    for (int r = -1; r < reps; ++r) {
      s.context().truncate(0);
      int32_t t = tok(rng);
      auto t0 = Clock::now();
      for (int64_t i = 0; i < p.bench_tg; ++i) {
        const float* l = s.context().forward(&t, 1);
        t = engine::argmax(std::span<const float>(l, static_cast<size_t>(V)));
      }
      double sec = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r >= 0) ts.push_back(static_cast<double>(p.bench_tg) / sec);
    }
    out["tg"] = {{"tokens", p.bench_tg}, {"tok_s", median(ts)}, {"runs", ts}};
  }
  return out;
}

}  // namespace

json InferenceParams::to_json() const {
  json l = json::array();
  for (const auto& a : loras) l.push_back({{"path", a.path}, {"scale", a.scale}});
  const engine::SamplingParams& s = gen.sampling;
  // JSON strings must be valid UTF-8; the prompt may not be (the engine replaces bad bytes too).
  json stop = json::array();
  for (const std::string& x : gen.stop) stop.push_back(engine::sanitize_utf8(x));
  return {{"model", model},
          {"loras", l},
          {"prompt", engine::sanitize_utf8(prompt)},
          {"chat", chat},
          {"system", engine::sanitize_utf8(system)},
          {"max_tokens", gen.max_tokens},
          {"temperature", s.temperature},
          {"top_k", s.top_k},
          {"top_p", s.top_p},
          {"min_p", s.min_p},
          {"repeat_penalty", s.repeat_penalty},
          {"presence_penalty", s.presence_penalty},
          {"frequency_penalty", s.frequency_penalty},
          {"penalty_last_n", s.penalty_last_n},
          {"seed", s.seed},
          {"stop", stop},
          {"ctx_size", ctx_size},
          {"skip_bad_lora", skip_bad_lora},
          {"threads", threads},
          {"merge", merge}};
}

engine::AdapterSet load_adapters(engine::Engine& eng, const std::vector<engine::AdapterSpec>& specs,
                                 bool skip_bad, std::vector<std::string>* rejected) {
  if (skip_bad) return eng.adapter_set(specs, rejected);
  engine::AdapterSet set;
  for (const engine::AdapterSpec& s : specs) {
    try {
      engine::check_lora_scale(s.scale, s.path);
      set.push_back({eng.load_adapter(s.path), s.scale});
    } catch (const Error& e) {
      // A typo in a path must not quietly answer with the base model.
      fail(e.code(), "LoRA adapter rejected: {} (--skip-bad-lora runs without it)", e.what());
    }
  }
  return set;
}

void validate(const InferenceParams& p) {
  engine::validate(p.gen.sampling);
  if (p.gen.max_tokens < 0)
    fail(ErrorCode::kInvalidArgument, "max_tokens {}: must be >= 0", p.gen.max_tokens);
  if (p.ctx_size < 0)
    fail(ErrorCode::kInvalidArgument, "ctx_size {}: must be >= 0 (0: the default)", p.ctx_size);
  if (p.threads < 0)
    fail(ErrorCode::kInvalidArgument, "threads {}: must be >= 0 (0: every core)", p.threads);
  if (p.bench_pp < 0 || p.bench_tg < 0 || p.bench_reps < 1)
    fail(ErrorCode::kInvalidArgument,
         "bench: pp {} and tg {} must be >= 0 (0: not timed), reps {} must be >= 1", p.bench_pp,
         p.bench_tg, p.bench_reps);
  for (const engine::AdapterSpec& a : p.loras) engine::check_lora_scale(a.scale, a.path);
}

json infer(const InferenceParams& p, const engine::TokenCallback& stream) {
  validate(p);
  set_num_threads(p.threads);
  const auto t0 = Clock::now();
  auto eng = engine::Engine::open(p.model);
  std::vector<std::string> rejected;
  engine::AdapterSet set = load_adapters(*eng, p.loras, p.skip_bad_lora, &rejected);
  const json adapters = adapters_json(set);
  std::shared_ptr<const engine::Model> model = eng->model();
  if (p.merge && !set.empty()) {
    model = model->merged(engine::merge_terms(set, *model));
    set.clear();
  }
  const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  engine::Session s(model,
                    {engine::context_size_for(model->config(), p.ctx_size, "--ctx-size"), 512});
  s.set_adapters(set);
  if (!p.system.empty()) s.set_system(p.system);

  json r = {{"model",
             {{"path", p.model},
              {"weight_types", model->weight_types()},
              {"weight_bytes", model->weight_bytes()},
              {"ctx_size", s.n_ctx()}}},
            {"adapters", adapters},
            {"rejected_adapters", rejected},
            {"merged", p.merge && !adapters.empty()},
            {"threads", num_threads()}};
  if (p.bench_pp > 0 || p.bench_tg > 0) {
    r["bench"] = bench(s, p);
    r["timings"] = {{"load_s", load_s}};
    r["peak_rss_bytes"] = peak_rss_bytes();
    return r;
  }
  engine::GenerateResult g = !p.prompt_ids.empty() ? s.generate(p.prompt_ids, p.gen, stream)
                             : p.chat              ? s.chat(p.prompt, p.gen, stream)
                                                   : s.complete(p.prompt, p.gen, stream);
  r["text"] = g.text;
  r["tokens"] = g.tokens;
  r["prompt_tokens"] = g.prompt_tokens;
  r["new_tokens"] = g.tokens.size();
  r["reused_tokens"] = g.reused_tokens;
  r["stop_reason"] = g.stop_reason;
  if (p.chat) r["rendered_prompt"] = s.last_prompt();
  r["timings"] = {{"load_s", load_s},
                  {"prompt_s", g.prompt_s},
                  {"gen_s", g.gen_s},
                  {"prompt_tok_s", g.prompt_tok_s()},
                  {"gen_tok_s", g.gen_tok_s()}};
  r["peak_rss_bytes"] = peak_rss_bytes();
  return r;
}

json run_inference(const RunSession& session, const InferenceParams& p,
                   const engine::TokenCallback& stream) {
  json result;
  json summary = run_step(session, "run_inference", p.to_json(), [&](StepContext& c) {
    result = infer(p, stream);
    for (auto& [k, v] : result.items()) {
      if (k == "timings" || k == "peak_rss_bytes" || k == "bench")
        c.set_metric(k, v);
      else
        c.set_output(k, v);
    }
  });
  return summary;
}

}  // namespace nnpipe
