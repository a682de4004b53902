// nnpipe infer: one prompt through the inference engine (GGUF or HF model, stacked LoRA adapters),
// run as step run_inference of a session; --bench-pp/--bench-tg time it like llama-bench.
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "backend/cpu/kernel_report.h"
#include "cli_checks.h"
#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "engine/engine.h"
#include "pipeline/inference_step.h"

namespace {

using namespace nnpipe;

struct InferArgs {
  InferenceParams p;
  std::vector<std::string> loras;
  std::string prompt_ids, prompt_file, session, dump_logits;
  nnpipe::fs::path runs_dir = default_runs_dir();
  bool as_json = false;
};

// "1,2,3": every element an integer (an empty one, "1,,2", is a typo, not a skip).
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  if (s.empty()) return ids;
  size_t at = 0;
  while (true) {
    const size_t comma = std::min(s.find(',', at), s.size());
    const std::string t = s.substr(at, comma - at);
    int32_t id = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), id);
    if (t.empty())
      fail(ErrorCode::kInvalidArgument, "--prompt-ids: element {} is empty in \"{}\"",
           ids.size() + 1, s);
    if (ec != std::errc() || p != t.data() + t.size())
      fail(ErrorCode::kInvalidArgument, "--prompt-ids: \"{}\" is not a token id", t);
    ids.push_back(id);
    if (comma == s.size()) break;
    at = comma + 1;
  }
  return ids;
}

// (n, V) f32 logits as .npy (numpy's format v1.0).
void write_npy(const fs::path& path, const std::vector<float>& v, int64_t n, int64_t V) {
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", n, V);
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&len), 2);
  f << header;
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  if (!f) fail(ErrorCode::kIo, "{}: cannot write logits", path.string());
}

int dump_logits(const InferArgs& a, const std::vector<int32_t>& ids) {
  validate(a.p);
  set_num_threads(a.p.threads);
  auto eng = engine::Engine::open(a.p.model);
  std::vector<std::string> rejected;
  engine::AdapterSet set = load_adapters(*eng, a.p.loras, a.p.skip_bad_lora, &rejected);
  engine::Session s(
      eng->model(),
      {engine::context_size_for(eng->model()->config(), a.p.ctx_size, "--ctx-size"), 512});
  s.set_adapters(set);
  std::vector<int32_t> toks =
      ids.empty() ? eng->model()->assets().tokenizer.encode(engine::sanitize_utf8(a.p.prompt))
                  : ids;
  std::vector<float> l = s.all_logits(toks);
  write_npy(a.dump_logits, l, static_cast<int64_t>(toks.size()), eng->model()->vocab_size());
  std::cout << json{{"tokens", toks}, {"rejected_adapters", rejected}}.dump() << "\n";
  return 0;
}

int run_infer(InferArgs& a) {
  for (const std::string& l : a.loras) {
    auto [path, scale] = engine::parse_lora_arg(l);
    a.p.loras.push_back({path, scale});
  }
  if (!a.prompt_file.empty()) a.p.prompt = read_file(a.prompt_file);
  a.p.prompt_ids = parse_ids(a.prompt_ids);
  if (!a.dump_logits.empty()) return dump_logits(a, a.p.prompt_ids);
  log::debug("{}", cpu::kernel_report());
  RunSession session(a.runs_dir,
                     a.session.empty() ? new_session_id(a.runs_dir, "infer") : a.session);
  const bool bench = a.p.bench_pp > 0 || a.p.bench_tg > 0;
  engine::TokenCallback stream;
  if (!a.as_json && !bench)
    stream = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    };
  json summary = run_inference(session, a.p, stream);
  if (a.as_json)
    std::cout << summary.dump(2) << "\n";
  else if (bench)
    std::cout << summary["metrics"]["bench"].dump(2) << "\n";
  else
    std::cout << "\n";
  const json& t = summary["metrics"]["timings"];
  if (!bench)
    log::info("prompt {} tokens ({} reused) at {:.1f} tok/s, {} new at {:.1f} tok/s ({})",
              summary["outputs"]["prompt_tokens"].get<int64_t>(),
              summary["outputs"]["reused_tokens"].get<int64_t>(), t["prompt_tok_s"].get<double>(),
              summary["outputs"]["new_tokens"].get<int64_t>(), t["gen_tok_s"].get<double>(),
              summary["outputs"]["stop_reason"].get<std::string>());
  return 0;
}

}  // namespace

namespace nnpipe::cli {

// Options shared by infer and chat: model, adapters, sampling, context.
void add_engine_options(CLI::App& app, InferenceParams& p, std::vector<std::string>& loras) {
  using engine::SamplingLimits;
  const int64_t kIntMax = std::numeric_limits<int>::max();
  app.add_option("--model", p.model, "GGUF model file or HF model directory")->required();
  app.add_option("--lora", loras,
                 "LoRA adapter FILE[:SCALE] (GGUF LoRA or PEFT directory; repeat to stack, in "
                 "order; scale default 1, 0 disables, |scale| <= 1e4). An adapter that cannot be "
                 "used is an error");
  app.add_flag("--skip-bad-lora", p.skip_bad_lora,
               "Run without an adapter that cannot be used (warn, list it in rejected_adapters) "
               "instead of failing");
  app.add_option("--max-tokens,-n", p.gen.max_tokens, "Tokens to generate at most (128)")
      ->check(cli::int_in(0, std::numeric_limits<int64_t>::max()));
  app.add_option("--temp", p.gen.sampling.temperature, "Temperature (0 = greedy, the default)")
      ->check(cli::finite_in(0, SamplingLimits::kMaxTemperature));
  app.add_option("--top-k", p.gen.sampling.top_k, "Top-k (40; 0 = off)")
      ->check(cli::int_in(0, kIntMax));
  app.add_option("--top-p", p.gen.sampling.top_p, "Top-p (0.95; 1 = off)")
      ->check(cli::finite_in(0, 1));
  app.add_option("--min-p", p.gen.sampling.min_p, "Min-p (0.05; 0 = off)")
      ->check(cli::finite_in(0, 1));
  app.add_option("--repeat-penalty", p.gen.sampling.repeat_penalty, "Repetition penalty (1 = off)")
      ->check(cli::finite_in(0, SamplingLimits::kMaxPenalty, /*lo_open=*/true));
  app.add_option("--presence-penalty", p.gen.sampling.presence_penalty, "Presence penalty (0)")
      ->check(cli::finite_in(-SamplingLimits::kMaxPenalty, SamplingLimits::kMaxPenalty));
  app.add_option("--frequency-penalty", p.gen.sampling.frequency_penalty, "Frequency penalty (0)")
      ->check(cli::finite_in(-SamplingLimits::kMaxPenalty, SamplingLimits::kMaxPenalty));
  app.add_option("--repeat-last-n", p.gen.sampling.penalty_last_n,
                 "Tokens the penalties look back on (64; -1 = all)")
      ->check(cli::int_in(-1, kIntMax));
  app.add_option("--seed", p.gen.sampling.seed, "Sampling seed (0)")->check(cli::seed_check());
  app.add_option("--stop", p.gen.stop, "Stop string (repeatable)");
  app.add_flag("--ignore-eos", p.gen.ignore_eos, "Do not stop at end-of-generation tokens");
  app.add_option("--ctx-size,-c", p.ctx_size,
                 "Context size in tokens (default min(4096, the model's context length); a "
                 "larger value than the model's context length is capped to it, with a warning, "
                 "as eval --ctx is)")
      ->check(cli::int_in(0, std::numeric_limits<int64_t>::max()));
  app.add_option("--threads,-t", p.threads, "Compute threads (0: every core)")
      ->check(cli::threads_in());
  app.add_flag("--merge", p.merge, "Merge the adapters into f32 weights first (fastest decode)");
  app.add_option("--system", p.system, "System message (chat)");
}

}  // namespace nnpipe::cli

NNPIPE_COMMAND("infer", "Run a prompt through the inference engine (GGUF/HF model + LoRA stack)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<InferArgs>();
                 nnpipe::cli::add_engine_options(app, a->p, a->loras);
                 app.add_option("--prompt,-p", a->p.prompt, "The prompt text");
                 app.add_option("--prompt-file", a->prompt_file, "Read the prompt from a file");
                 app.add_option("--prompt-ids", a->prompt_ids,
                                "The prompt as comma-separated token ids");
                 app.add_flag("--chat", a->p.chat,
                              "Treat the prompt as a user message (the model's chat template)");
                 app.add_flag("--json", a->as_json, "Print the step summary as JSON on stdout");
                 app.add_option("--session", a->session, "Session id (default infer-<time>)");
                 app.add_option("--runs-dir", a->runs_dir, "Runs folder (default ./runs)");
                 const int64_t kMax = std::numeric_limits<int64_t>::max();
                 app.add_option("--bench-pp", a->p.bench_pp,
                                "Time prompt processing of N random tokens (like llama-bench -p)")
                     ->check(nnpipe::cli::int_in(1, kMax));
                 app.add_option("--bench-tg", a->p.bench_tg,
                                "Time N single-token decodes (like llama-bench -n)")
                     ->check(nnpipe::cli::int_in(1, kMax));
                 app.add_option("--bench-reps", a->p.bench_reps, "Timed repetitions (3)")
                     ->check(nnpipe::cli::int_in(1, 1000000));
                 app.add_option("--dump-logits", a->dump_logits,
                                "Write the logits of every prompt position to FILE (.npy) and "
                                "exit (tests)");
                 return [a] { return run_infer(*a); };
               });
