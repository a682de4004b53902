// Developer commands for conformance tests of the training building blocks: AdamW steps, gradient
// clipping, learning-rate schedules and PEFT LoRA adapter I/O. Not part of the user interface.
#include <iostream>
#include <map>

#include "backend/backend.h"
#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "tensor/convert.h"
#include "train/adamw.h"
#include "train/lr_schedule.h"
#include "train/params.h"

namespace {

using namespace nnpipe;

// Tensors whose names start with `prefix`, keyed by the rest of the name, as f32 CPU tensors.
std::map<std::string, Tensor> with_prefix(const SafetensorsFile& f, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (const auto& t : f.tensors())
    if (t.name.rfind(prefix, 0) == 0)
      out[t.name.substr(prefix.size())] = Tensor::from_f32(to_f32(t.dtype, t.data), t.shape);
  return out;
}

struct AdamArgs {
  std::string in, out, state_in, state_out;
  AdamWHyper h;
  int64_t steps = 1;
  double max_grad_norm = 0;
};

int run_adamw(AdamArgs& a) {
  const SafetensorsFile f = SafetensorsFile::open(a.in);
  auto params = with_prefix(f, "p.");
  if (params.empty()) fail(ErrorCode::kInvalidArgument, "{}: no p.* tensors", a.in);
  AdamW opt(cpu_backend(), a.h);
  if (!a.state_in.empty()) opt.load(a.state_in);
  json norms = json::array();
  for (int64_t k = 0; k < a.steps; ++k) {
    auto grads = with_prefix(f, fmt::format("g{}.", k));
    if (grads.size() != params.size())
      fail(ErrorCode::kInvalidArgument, "{}: step {}: {} grads for {} params", a.in, k,
           grads.size(), params.size());
    if (a.max_grad_norm > 0) {
      std::vector<Tensor> gs;
      for (auto& [name, g] : grads) gs.push_back(g);
      norms.push_back(clip_grad_norm(cpu_backend(), gs, a.max_grad_norm));
    }
    for (auto& [name, p] : params) {
      auto it = grads.find(name);
      if (it == grads.end()) fail(ErrorCode::kInvalidArgument, "{}: no g{}.{}", a.in, k, name);
      opt.step(name, p, it->second);
    }
  }
  std::vector<TensorRef> refs;
  for (const auto& [name, p] : params) {
    refs.push_back({"p." + name, DType::kF32, p.shape(), p.bytes()});
    const AdamWState* st = opt.state(name);
    refs.push_back({"exp_avg." + name, DType::kF32, p.shape(), st->exp_avg.bytes()});
    refs.push_back({"exp_avg_sq." + name, DType::kF32, p.shape(), st->exp_avg_sq.bytes()});
  }
  write_safetensors(a.out, refs, {{"grad_norms", norms.dump()}});
  if (!a.state_out.empty()) opt.save(a.state_out);
  return 0;
}

NNPIPE_COMMAND(
    "dev-adamw", "[developer] Apply AdamW steps: --in holds params p.<name> and grads g<k>.<name>",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<AdamArgs>();
      app.add_option("--in", a->in, "Input .safetensors")->required();
      app.add_option("--out", a->out, "Output: p.*, exp_avg.*, exp_avg_sq.*")->required();
      app.add_option("--lr", a->h.lr, "Learning rate");
      app.add_option("--wd", a->h.weight_decay, "Weight decay (default 0.01)");
      app.add_option("--beta1", a->h.beta1);
      app.add_option("--beta2", a->h.beta2);
      app.add_option("--eps", a->h.eps);
      app.add_option("--steps", a->steps, "Number of steps (grads g0.. g<steps-1>)");
      app.add_option("--max-grad-norm", a->max_grad_norm,
                     "Clip each step's grads to this global norm first (0: off)");
      app.add_option("--state-in", a->state_in, "Optimizer state to start from");
      app.add_option("--state-out", a->state_out, "Write the optimizer state here");
      return [a] { return run_adamw(*a); };
    });

struct ClipArgs {
  std::string in, out;
  double max_norm = 1.0;
};

NNPIPE_COMMAND("dev-clip-grad",
               "[developer] clip_grad_norm_ over all tensors of --in; prints the total norm",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<ClipArgs>();
                 app.add_option("--in", a->in)->required();
                 app.add_option("--out", a->out)->required();
                 app.add_option("--max-norm", a->max_norm);
                 return [a] {
                   const SafetensorsFile f = SafetensorsFile::open(a->in);
                   auto grads = with_prefix(f, "");
                   std::vector<Tensor> gs;
                   for (auto& [name, g] : grads) gs.push_back(g);
                   const float norm = clip_grad_norm(cpu_backend(), gs, a->max_norm);
                   std::vector<TensorRef> refs;
                   for (const auto& [name, g] : grads)
                     refs.push_back({name, DType::kF32, g.shape(), g.bytes()});
                   write_safetensors(a->out, refs);
                   std::cout << json({{"total_norm", norm}}).dump() << "\n";
                   return 0;
                 };
               });

struct LrArgs {
  std::string schedule = "linear";
  int64_t warmup = 0, total = 100, steps = -1;
};

NNPIPE_COMMAND("dev-lr",
               "[developer] Print the learning-rate multipliers of steps 0..steps-1 as JSON",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<LrArgs>();
                 app.add_option("--schedule", a->schedule)
                     ->check(CLI::IsMember({"constant", "linear", "cosine"}));
                 app.add_option("--warmup", a->warmup);
                 app.add_option("--total", a->total);
                 app.add_option("--steps", a->steps, "How many values (default: total + 1)");
                 return [a] {
                   const LrSchedule s = *lr_schedule_from_name(a->schedule);
                   const int64_t n = a->steps >= 0 ? a->steps : a->total + 1;
                   json out = json::array();
                   for (int64_t i = 0; i < n; ++i)
                     out.push_back(lr_multiplier(s, i, a->warmup, a->total));
                   std::cout << out.dump() << "\n";
                   return 0;
                 };
               });

struct LoraArgs {
  std::string adapter, model, out;
  int64_t rank = 8;
  double alpha = 16, dropout = 0;
  uint64_t seed = 0;
  std::vector<std::string> targets = lora_all_linear_modules();
  bool rslora = false;
};

ModelConfig model_config(const std::string& dir) {
  return ModelConfig::load(fs::path(dir) / "config.json");
}

NNPIPE_COMMAND("dev-lora-roundtrip",
               "[developer] Load a PEFT LoRA adapter, validate it against --model, rewrite it",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<LoraArgs>();
                 app.add_option("--adapter", a->adapter)->required();
                 app.add_option("--model", a->model, "Base model directory");
                 app.add_option("--out", a->out, "Output adapter directory");
                 return [a] {
                   PeftAdapter ad = PeftAdapter::load(a->adapter);
                   if (!a->model.empty()) ad.validate(model_config(a->model), a->adapter);
                   if (!a->out.empty()) ad.save(a->out);
                   std::cout << json({{"r", ad.config.r},
                                      {"scaling", ad.config.scaling()},
                                      {"modules", ad.modules.size()},
                                      {"dtype", dtype_name(ad.dtype)}})
                                    .dump()
                             << "\n";
                   return 0;
                 };
               });

NNPIPE_COMMAND("dev-lora-init", "[developer] Write a freshly initialised PEFT LoRA adapter",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<LoraArgs>();
                 app.add_option("--model", a->model, "Base model directory")->required();
                 app.add_option("--rank", a->rank);
                 app.add_option("--alpha", a->alpha);
                 app.add_option("--dropout", a->dropout);
                 app.add_option("--seed", a->seed);
                 app.add_option("--target-modules", a->targets);
                 app.add_flag("--rslora", a->rslora);
                 app.add_option("--out", a->out)->required();
                 return [a] {
                   LoraConfig c;
                   c.r = a->rank;
                   c.lora_alpha = a->alpha;
                   c.lora_dropout = a->dropout;
                   c.target_modules = a->targets;
                   c.use_rslora = a->rslora;
                   c.base_model_name_or_path = a->model;
                   PeftAdapter::init(model_config(a->model), c, a->seed).save(a->out);
                   return 0;
                 };
               });

}  // namespace
