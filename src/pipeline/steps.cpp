#include "pipeline/steps.h"

#include "core/file.h"
#include "core/log.h"
#include "train/trainer.h"

namespace nnpipe {
namespace {

// Copies a finished output directory to the user's output_dir, atomically.
void publish(const fs::path& from, const std::string& output_dir) {
  if (output_dir.empty()) return;
  StagingDir staging(output_dir);
  fs::copy(from, staging.path(), fs::copy_options::recursive);
  staging.commit();
  log::info("copied {} to {}", from.string(), output_dir);
}

// One training step: trains in the step folder, publishes the result, records outputs/metrics.
template <typename Params>
json train_step(const Session& session, const char* default_step, const Params& params,
                const FinetuneStepOptions& opt, const char* output_key,
                TrainResult (*train)(const Params&, const TrainOptions&)) {
  const std::string step = opt.step.empty() ? default_step : opt.step;
  return run_step(session, step, params.to_json(), [&](StepContext& c) {
    TrainResult r = train(params, TrainOptions{c.dir(), opt.resume, opt.progress, 2});
    publish(r.output, params.output_dir);
    c.set_output(output_key, r.output.string());
    c.set_output("metrics", (c.dir() / "metrics.jsonl").string());
    c.set_output("loss_curve", (c.dir() / "loss.svg").string());
    c.set_output("checkpoints", (c.dir() / "checkpoints").string());
    const json metrics = r.to_json();
    for (auto it = metrics.begin(); it != metrics.end(); ++it) c.set_metric(it.key(), it.value());
  });
}

}  // namespace

json finetune_full(const Session& session, const FinetuneFullParams& params,
                   const FinetuneStepOptions& opt) {
  return train_step<FinetuneFullParams>(session, "finetune_full", params, opt, "model",
                                        &nnpipe::finetune_full);
}

json finetune_lora(const Session& session, const FinetuneLoraParams& params,
                   const FinetuneStepOptions& opt) {
  return train_step<FinetuneLoraParams>(session, "finetune_lora", params, opt, "adapter",
                                        &nnpipe::finetune_lora);
}

}  // namespace nnpipe
