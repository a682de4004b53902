// The trainer: full fine-tuning and LoRA (fresh or continued from an adapter) on a chat dataset,
// with HF Trainer semantics where they are observable — micro-batches of batch_size, gradients
// accumulated over gradient_accumulation_steps and normalised by the step's label tokens, global
// norm clipping, AdamW (no weight decay on biases and norms), LR schedule with warmup — plus
// atomic checkpoints that a killed run resumes from bit for bit.
//
// Outputs in the step folder: model/ (full: an HF directory) or adapter/ (LoRA: a PEFT directory),
// checkpoints/, metrics.jsonl and loss.svg.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/file.h"
#include "core/json.h"
#include "dist/collective.h"
#include "io/peft_adapter.h"
#include "train/dataset.h"
#include "train/params.h"

namespace nnpipe {

struct TrainOptions {
  fs::path step_dir;
  bool resume = false;  // continue from the newest checkpoint in step_dir (fresh if there is none)
  bool progress = true;
  int keep_checkpoints = 2;
  // Data parallelism (docs/DISTRIBUTED.md): null or world 1 trains in this process alone. With
  // W ranks an optimizer step holds W x gradient_accumulation_steps micro-batches, rank r taking
  // micro-batches r, r+W, ...: the run equals one process with W times the accumulation. Only
  // rank 0 writes into step_dir.
  dist::Collective* comm = nullptr;
  int zero_stage = 0;   // 1: AdamW moments sharded across the ranks (train/zero.h)
  bool overlap = true;  // reduce each layer's gradients while the layers below run backward
};

struct TrainResult {
  fs::path output;  // model/ or adapter/
  int64_t steps = 0;
  int64_t resumed_from_step = 0;  // 0: a fresh run
  double first_loss = 0;          // of this process's first step
  double final_loss = 0;
  int64_t tokens = 0;          // input tokens processed (all steps, resumes included)
  int64_t trained_tokens = 0;  // loss tokens
  double train_seconds = 0;    // wall time of all steps (resumes included)
  double tokens_per_s = 0;     // after 2 warm-up steps (all steps if there are fewer)
  int64_t peak_rss_bytes = 0;
  int64_t trainable_parameters = 0;
  DatasetStats data;
  json lora;  // LoRA: the adapter's effective {r, lora_alpha, target_modules, use_rslora, ...}
  std::vector<std::string> warnings;
  // Data parallel runs: {world, backend, zero_stage, adamw_state_bytes_per_rank, compute_s,
  // comm_s, exposed_comm_s, hidden_fraction, overlap}; null in a single process.
  json dist;
  json to_json() const;  // the summary.json "metrics"
};

// Both run every tensor operation (model, accumulation, clipping, AdamW, dropout) on `be`.
TrainResult finetune_full(const FinetuneFullParams& p, const TrainOptions& o, Backend& be);
TrainResult finetune_lora(const FinetuneLoraParams& p, const TrainOptions& o, Backend& be);

// Continual LoRA: the shape of `checkpoint` (r, lora_alpha, target_modules, use_rslora) wins over
// the requested one — its A/B matrices define it. Each difference becomes a warning.
LoraConfig resolve_continual_config(const LoraConfig& checkpoint, const FinetuneLoraParams& p,
                                    std::vector<std::string>& warnings);

// The HF Trainer's weight-decay exemption: biases and normalisation weights.
bool decays(const std::string& param_name);

}  // namespace nnpipe
