// nnpipe generate: greedy chat reply from an HF model (optionally with a PEFT adapter) using the
// training forward — a check of what a fine-tuned model learned. Fast inference is `nnpipe infer`.
#include <iostream>

#include "command.h"
#include "core/json.h"
#include "core/sysinfo.h"
#include "model/generate.h"

namespace {

struct GenerateArgs {
  std::string model, lora, user, system;
  int64_t max_new_tokens = 64;
  int threads = 0;
  bool as_json = false;
};

int run_generate(const GenerateArgs& a) {
  using namespace nnpipe;
  set_num_threads(a.threads);
  ChatAssets assets = load_chat_assets(a.model);
  Qwen2Model model = load_for_chat(a.model, a.lora);
  ordered_json messages = ordered_json::array();
  if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
  messages.push_back({{"role", "user"}, {"content", a.user}});
  ChatReply r = chat_reply(model, assets, messages, a.max_new_tokens);
  if (a.as_json)
    std::cout << json{{"reply", r.text},
                      {"prompt", r.prompt},
                      {"prompt_tokens", r.prompt_tokens},
                      {"new_tokens", r.new_tokens}}
                     .dump(2)
              << "\n";
  else
    std::cout << r.text << "\n";
  return 0;
}

NNPIPE_COMMAND("generate",
               "Greedy chat reply of a model (+ optional LoRA adapter) with the training forward",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<GenerateArgs>();
                 app.add_option("--model", a->model, "HF model directory")->required();
                 app.add_option("--lora", a->lora, "PEFT adapter directory to apply");
                 app.add_option("--user", a->user, "The user message")->required();
                 app.add_option("--system", a->system, "A system message");
                 app.add_option("--max-new-tokens", a->max_new_tokens, "Default 64");
                 app.add_option("--threads", a->threads, "Compute threads");
                 app.add_flag("--json", a->as_json, "Print reply, prompt and counts as JSON");
                 return [a] { return run_generate(*a); };
               });

}  // namespace
