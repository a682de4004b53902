// nnpipe chat: an interactive chat REPL over the inference engine. Reads one user message per
// line from stdin, streams the reply to stdout (one reply per turn, then a blank line), keeps the
// conversation (KV reuse across turns). Commands: /exit, /reset.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "engine/engine.h"
#include "pipeline/inference_step.h"

namespace nnpipe::cli {
void add_engine_options(CLI::App& app, InferenceParams& p, std::vector<std::string>& loras);
}

namespace {

using namespace nnpipe;

struct ChatArgs {
  InferenceParams p;
  std::vector<std::string> loras;
};

int run_chat(ChatArgs& a) {
  for (const std::string& l : a.loras) {
    auto [path, scale] = engine::parse_lora_arg(l);
    a.p.loras.push_back({path, scale});
  }
  validate(a.p);
  set_num_threads(a.p.threads);
  auto eng = engine::Engine::open(a.p.model);
  std::vector<std::string> rejected;
  engine::AdapterSet set = load_adapters(*eng, a.p.loras, a.p.skip_bad_lora, &rejected);
  std::shared_ptr<const engine::Model> model = eng->model();
  if (a.p.merge && !set.empty()) {
    model = model->merged(engine::merge_terms(set, *model));
    set.clear();
  }
  engine::Session s(model,
                    {engine::context_size_for(model->config(), a.p.ctx_size, "--ctx-size"), 512});
  s.set_adapters(set);
  if (!a.p.system.empty()) s.set_system(a.p.system);
  const bool tty = isatty(STDIN_FILENO);
  log::info("chat with {} ({} adapter(s)); /exit quits, /reset starts over", a.p.model, set.size());
  std::string line;
  while (true) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      s.reset();
      if (!a.p.system.empty()) s.set_system(a.p.system);
      log::info("conversation reset");
      continue;
    }
    try {
      engine::GenerateResult r = s.chat(line, a.p.gen, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      std::fputs("\n\n", stdout);
      std::fflush(stdout);
      log::debug("turn: {} prompt tokens ({} reused), {} new, {}", r.prompt_tokens, r.reused_tokens,
                 r.tokens.size(), r.stop_reason);
    } catch (const Error& e) {
      // A turn that cannot run (e.g. the context is full) does not end the chat.
      log::error("{}", e.what());
      std::fputs("\n", stdout);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

NNPIPE_COMMAND("chat", "Interactive chat with a model (+ LoRA stack); /exit, /reset",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<ChatArgs>();
                 nnpipe::cli::add_engine_options(app, a->p, a->loras);
                 return [a] { return run_chat(*a); };
               });
