// Step run_inference: load a model (GGUF or HF dir) with a stack of LoRA adapters, run one prompt
// (raw or as a chat turn) and record text, token counts, timings and the adapters used in
// summary.json. Also the llama-bench style measurement (pp/tg tokens per second).
#pragma once
#include <string>
#include <vector>

#include "core/json.h"
#include "engine/engine.h"
#include "pipeline/session.h"

namespace nnpipe {

struct InferenceParams {
  std::string model;                       // GGUF file or HF directory
  std::vector<engine::AdapterSpec> loras;  // GGUF LoRA files or PEFT dirs, with scales, in order
  std::string prompt;
  std::vector<int32_t> prompt_ids;  // used instead of `prompt` when non-empty (tests)
  bool chat = false;                // render `prompt` as a user turn with the chat template
  std::string system;               // chat only
  engine::GenerateParams gen;
  int64_t ctx_size = 0;  // 0: min(4096, the model's context length); capped at that length
  // A rejected adapter (missing, corrupt, for another model) is an error unless this is set:
  // then it is left out with a warning and listed in rejected_adapters (the engine's semantics).
  bool skip_bad_lora = false;
  int threads = 0;
  bool merge = false;  // merge the adapters into f32 weights first (max speed)
  // llama-bench style timing instead of a prompt: pp = a random prompt of bench_pp tokens, tg =
  // bench_tg single-token decodes from an empty cache; each repeated bench_reps times (median).
  int64_t bench_pp = 0, bench_tg = 0;
  int bench_reps = 3;

  json to_json() const;
};

// The adapter set of `specs` on `eng` (in order). A rejected adapter throws "LoRA adapter
// rejected: <path>: <why>" unless `skip_bad`: then it is left out with a warning and its message
// appended to `rejected`.
engine::AdapterSet load_adapters(engine::Engine& eng, const std::vector<engine::AdapterSpec>& specs,
                                 bool skip_bad, std::vector<std::string>* rejected);

// Checks what can be checked before a model loads (sampling, bench sizes); throws
// kInvalidArgument naming the value.
void validate(const InferenceParams& p);

// Runs without a step folder (the pipeline's last step and the chat command build on this).
// `stream` receives the text as it is generated. Returns the summary's outputs+metrics:
// {text, prompt_tokens, new_tokens, reused_tokens, stop_reason, timings {...}, adapters [...],
//  rejected_adapters [...], model {...}}.
json infer(const InferenceParams& p, const engine::TokenCallback& stream = {});

// The same as step "run_inference" of `session` (runs/<id>/run_inference/summary.json).
json run_inference(const RunSession& session, const InferenceParams& p,
                   const engine::TokenCallback& stream = {});

}  // namespace nnpipe
