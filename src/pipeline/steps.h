// The step API of DESIGN.md: each call runs one step of a session (runs/<id>/<step>/) and returns
// its summary (also written to summary.json, on failure too).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "dist/collective.h"
#include "export/hf_quantize.h"
#include "io/gguf.h"
#include "pipeline/session.h"
#include "train/params.h"

namespace nnpipe {

struct FinetuneStepOptions {
  std::string step;  // the step folder; empty: "finetune_full" / "finetune_lora"
  bool resume = false;
  bool progress = true;
  // Data parallelism (train/trainer.h's TrainOptions): ranks other than 0 train without writing
  // the step folder or its summary.json; their return value is their metrics only.
  dist::Collective* comm = nullptr;
  int zero_stage = 0;
  bool overlap = true;
};

// Full fine-tuning: outputs model/ (HF directory), metrics.jsonl, loss.svg, checkpoints/; with
// params.output_dir set the model is also copied there.
json finetune_full(const RunSession& session, const FinetuneFullParams& params,
                   const FinetuneStepOptions& opt = {});
// LoRA fine-tuning (continual when params.checkpoint_lora is set): outputs adapter/ (PEFT).
json finetune_lora(const RunSession& session, const FinetuneLoraParams& params,
                   const FinetuneStepOptions& opt = {});

// GGUF export of an HF model directory, one file per type name of `nnpipe export-gguf` (f16, q8_0,
// q4_k_m, ...): <step>/model-<type>.gguf. Metrics: bytes and tensor types per file.
json convert_model_to_gguf(const RunSession& session, const fs::path& model_dir,
                           const std::vector<std::string>& types,
                           const std::string& step = "convert_model_to_gguf");

// HF quantization of a model directory (export/hf_quantize.h): <step>/model/. Metrics: sizes and
// errors versus the original (totals; per tensor in <step>/tensors.json).
json quantize_model(const RunSession& session, const fs::path& model_dir,
                    const HfQuantizeOptions& opt, const std::string& step = "quantize_model");

// GGUF LoRA export of PEFT adapters trained on `base_model_dir`, one file per (name, adapter dir):
// <step>/<name>.gguf in `type` (F32, F16, BF16 or Q8_0).
json convert_lora_to_gguf(const RunSession& session, const fs::path& base_model_dir,
                          const std::vector<std::pair<std::string, fs::path>>& adapters,
                          GgmlType type, const std::string& step = "convert_lora_to_gguf");

}  // namespace nnpipe
