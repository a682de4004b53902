// nnpipe finetune-full / finetune-lora: one training step of a session. Parameters come from
// --params FILE (FinetuneFullParams / FinetuneLoraParams JSON) and are overridden by flags.
#include <functional>
#include <iostream>
#include <sstream>

#include "cli_checks.h"
#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "dist/collective.h"
#include "pipeline/session.h"
#include "pipeline/steps.h"

namespace {

struct FinetuneArgs {
  bool lora = false;
  std::string params_file, session, step;
  nnpipe::fs::path runs_dir = nnpipe::default_runs_dir();
  int threads = 0;
  bool resume = false, no_progress = false, as_json = false, no_shuffle = false, rslora = false;
  std::string targets;
  std::string dist = "auto";
  int zero = 0;
  bool no_overlap = false;
  // Flags given on the command line write their params key (after parsing).
  std::vector<std::function<void(nnpipe::json&)>> overrides;
};

// Adds a flag whose value, when given, overrides params key `key`.
template <typename T>
CLI::Option* param_option(CLI::App& app, std::shared_ptr<FinetuneArgs> a, const std::string& flag,
                          const std::string& key, const std::string& help) {
  auto value = std::make_shared<T>();
  CLI::Option* opt = app.add_option(flag, *value, help);
  a->overrides.push_back([opt, key, value](nnpipe::json& j) {
    if (opt->count()) j[key] = *value;
  });
  return opt;
}

void add_common(CLI::App& app, std::shared_ptr<FinetuneArgs> a) {
  app.add_option("--params", a->params_file,
                 "JSON file of parameters (the keys of FinetuneFullParams / FinetuneLoraParams; "
                 "flags below override it)");
  param_option<std::string>(app, a, "--model", "model_path", "Base model: an HF directory");
  param_option<std::string>(
      app, a, "--data", "dataset_path",
      "Dataset: chat (JSON list or JSONL of {\"messages\": [...]}) or plain text (.txt: "
      "documents separated by blank lines, every token trained)");
  param_option<std::string>(app, a, "--output-dir", "output_dir",
                            "Also copy the result here (it always lands in the step folder)");
  param_option<int64_t>(app, a, "--epochs", "num_epochs", "Epochs (default 1)");
  param_option<int64_t>(app, a, "--batch-size", "batch_size", "Examples per micro-batch (1)");
  param_option<double>(app, a, "--lr", "learning_rate", "Peak learning rate (2e-5)");
  param_option<int64_t>(app, a, "--max-seq-len", "max_seq_len",
                        "Truncate examples to this many tokens (2048; above the model's "
                        "max_position_embeddings: a warning)");
  param_option<int64_t>(app, a, "--grad-accum", "gradient_accumulation_steps",
                        "Micro-batches per optimizer step (1)");
  param_option<int64_t>(app, a, "--warmup-steps", "warmup_steps", "Linear warmup steps (0)");
  param_option<std::string>(app, a, "--scheduler", "lr_scheduler",
                            "constant | linear | cosine (linear)");
  param_option<double>(app, a, "--weight-decay", "weight_decay",
                       "AdamW weight decay, not applied to biases and norms (0)");
  param_option<double>(app, a, "--max-grad-norm", "max_grad_norm",
                       "Clip the global gradient norm; <= 0 disables (1.0)");
  param_option<uint64_t>(app, a, "--seed", "seed", "Seed of data order, LoRA init, dropout (42)")
      ->check(nnpipe::cli::seed_check());
  param_option<int64_t>(app, a, "--save-steps", "save_steps",
                        "Checkpoint every N steps (0: only at the end)");
  param_option<int64_t>(app, a, "--logging-steps", "logging_steps",
                        "Write metrics.jsonl every N steps (1)");
  param_option<int64_t>(app, a, "--max-steps", "max_steps",
                        "Stop after N optimizer steps (overrides --epochs)");
  param_option<std::string>(app, a, "--output-dtype", "output_dtype",
                            "auto | f32 | bf16 | f16: dtype of the saved model (full only)");
  app.add_flag("--no-shuffle", a->no_shuffle, "Keep the dataset order in every epoch");
  app.add_option("--session", a->session, "Session id (default: <command>-<UTC time>)");
  app.add_option("--step", a->step, "Step folder name (default: finetune_full / finetune_lora)");
  app.add_option("--runs-dir", a->runs_dir, "Runs folder (default: $NNPIPE_RUNS_DIR or ./runs)");
  app.add_option("--threads", a->threads, "Compute threads (default 0: all cores)")
      ->check(nnpipe::cli::threads_in());
  app.add_flag("--resume", a->resume,
               "Continue from the newest checkpoint of this session's step (after a crash or "
               "kill); the parameters must be the same");
  app.add_flag("--no-progress", a->no_progress, "No progress bar");
  app.add_flag("--json", a->as_json, "Print the step's summary as JSON on stdout");
  app.add_option("--dist", a->dist,
                 "Data parallelism: auto (from the launcher's environment: mpirun, torchrun, "
                 "srun; see docs/DISTRIBUTED.md), none, mpi or tcp")
      ->check(CLI::IsMember({"auto", "none", "mpi", "tcp"}));
  app.add_option("--zero", a->zero,
                 "ZeRO stage with several ranks: 0, or 1 to shard the AdamW state across them")
      ->check(CLI::Range(0, 1));
  app.add_flag("--no-overlap", a->no_overlap,
               "Reduce gradients after the backward pass instead of layer by layer during it");
}

int run_finetune(const FinetuneArgs& a) {
  using namespace nnpipe;
  json j = json::object();
  std::string origin = "command line";
  if (!a.params_file.empty()) {
    j = read_json_file(a.params_file);
    origin = a.params_file;
    if (!j.is_object())
      fail(ErrorCode::kInvalidArgument, "{}: expected a JSON object of parameters", origin);
  }
  for (const auto& apply : a.overrides) apply(j);
  if (a.no_shuffle) j["shuffle"] = false;
  if (a.lora && a.rslora) j["use_rslora"] = true;
  if (a.lora && !a.targets.empty()) {
    json list = json::array();
    std::stringstream ss(a.targets);
    for (std::string m; std::getline(ss, m, ',');)
      if (!m.empty()) list.push_back(m);
    j["target_modules"] = list;
  }
  if (!j.contains("model_path"))
    fail(ErrorCode::kInvalidArgument, "--model (or \"model_path\" in --params) is required");
  set_num_threads(a.threads);
  const std::string cmd = a.lora ? "finetune-lora" : "finetune-full";
  std::optional<dist::Kind> want;
  dist::parse_kind(a.dist, want);  // CLI11 checked the value
  const dist::LaunchEnv env = dist::detect_launch(dist::process_env(), want);
  std::unique_ptr<dist::Collective> comm = dist::make_collective(env);
  const int rank = comm->rank(), world = comm->world();
  if (rank > 0) log::set_console_level(spdlog::level::warn);  // rank 0 speaks for the run
  try {
    // Rank 0 names the session when --session is not given.
    std::string id = a.session;
    if (id.empty() && rank == 0) id = new_session_id(a.runs_dir, cmd);
    if (world > 1) id = comm->broadcast(id, 0);
    RunSession session(a.runs_dir, id, rank);
    if (world > 1)
      log::info("data parallel: rank {} of {} (local rank {}), launched by {}, collectives: {}",
                rank, world, comm->local_rank(), env.launcher, comm->name());
    FinetuneStepOptions so{a.step, a.resume, !a.no_progress};
    if (world > 1) so.comm = comm.get();
    so.zero_stage = a.zero;
    so.overlap = !a.no_overlap;
    json summary = a.lora ? finetune_lora(session, FinetuneLoraParams::from_json(j, origin), so)
                          : finetune_full(session, FinetuneFullParams::from_json(j, origin), so);
    // Nobody leaves before rank 0 has written the outputs: a failure there fails every rank.
    comm->set_context("finish");
    comm->barrier();
    if (a.as_json && rank == 0) std::cout << summary.dump(2) << "\n";
  } catch (const Error& e) {
    if (world == 1) throw;
    // The other ranks must stop too, now: MPI_Abort ends the job (it does not return, so the
    // error is logged first); Tcp shuts its sockets, which the peers see at once.
    const std::string msg = fmt::format("rank {}: {}", rank, e.what());
    if (std::string_view(comm->name()) == "mpi") log::error("{}", msg);
    comm->abort(1);
    throw Error(e.code(), msg);
  }
  return 0;
}

NNPIPE_COMMAND("finetune-full",
               "Full fine-tuning of an HF model on a chat dataset (outputs an HF model dir)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<FinetuneArgs>();
                 add_common(app, a);
                 return [a] { return run_finetune(*a); };
               });

NNPIPE_COMMAND(
    "finetune-lora",
    "LoRA fine-tuning on a frozen base (outputs a PEFT adapter); --checkpoint-lora continues one",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<FinetuneArgs>();
      a->lora = true;
      add_common(app, a);
      param_option<int64_t>(app, a, "--rank", "lora_rank",
                            "LoRA rank r (8; at most min(in, out) of every adapted matrix)");
      param_option<double>(app, a, "--alpha", "lora_alpha", "LoRA alpha (16)");
      param_option<double>(app, a, "--dropout", "lora_dropout", "Dropout on LoRA inputs (0.05)");
      app.add_option("--targets", a->targets,
                     "Comma-separated modules (default all: q_proj,k_proj,v_proj,o_proj,"
                     "gate_proj,up_proj,down_proj)");
      app.add_flag("--rslora", a->rslora, "rsLoRA scaling alpha/sqrt(r)");
      param_option<std::string>(app, a, "--matmul-dtype", "matmul_dtype",
                                "f32 (default) or bf16: multiply the frozen base's bf16 weights "
                                "in bf16 with f32 accumulation (AVX-512 BF16; faster, not "
                                "transformers' fp32 numerics)");
      param_option<std::string>(app, a, "--checkpoint-lora", "checkpoint_lora",
                                "Continue training this adapter (a PEFT directory, ours or "
                                "PEFT's); its rank/alpha/targets win over the flags");
      return [a] { return run_finetune(*a); };
    });

}  // namespace
