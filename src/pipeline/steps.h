// The step API of DESIGN.md: each call runs one step of a session (runs/<id>/<step>/) and returns
// its summary (also written to summary.json, on failure too).
#pragma once
#include <string>

#include "core/json.h"
#include "pipeline/session.h"
#include "train/params.h"

namespace nnpipe {

struct FinetuneStepOptions {
  std::string step;  // the step folder; empty: "finetune_full" / "finetune_lora"
  bool resume = false;
  bool progress = true;
};

// Full fine-tuning: outputs model/ (HF directory), metrics.jsonl, loss.svg, checkpoints/; with
// params.output_dir set the model is also copied there.
json finetune_full(const Session& session, const FinetuneFullParams& params,
                   const FinetuneStepOptions& opt = {});
// LoRA fine-tuning (continual when params.checkpoint_lora is set): outputs adapter/ (PEFT).
json finetune_lora(const Session& session, const FinetuneLoraParams& params,
                   const FinetuneStepOptions& opt = {});

}  // namespace nnpipe
