// nnpipe CLI entry point: global flags, then the self-registered subcommands (cmd_*.cpp).
#include <cblas.h>
#include <malloc.h>
#include <strings.h>
#include <unistd.h>
#include <algorithm>
#include <cstdio>

#include <cstdlib>
#include <iostream>
#include <new>
#include <string>
#include <string_view>

#include "backend/cpu/kernel_report.h"
#include "command.h"
#include "core/error.h"
#include "core/log.h"

namespace nnpipe::cli {
std::vector<CommandSpec>& registry() {
  static std::vector<CommandSpec> r;
  return r;
}
}  // namespace nnpipe::cli

namespace {

bool set_default_env(const char* name, const char* value) {
  if (std::getenv(name) != nullptr) return false;
  setenv(name, value, 1);
  return true;
}

// Returns whether the environment changed.
bool tune_runtime_environment(int argc, char** argv) {
  bool changed = false;
  // Inference commands' OpenMP workers spin ~0.1 ms between the ops of a token (libgomp's default
  // policy: a bounded spin count, then sleep): waking sleeping workers before each of a token's
  // ~170 matmuls cost a third of single-client decode (bench/RESULTS.md, issues 15 and 17). With
  // the OpenMP build of OpenBLAS (CMakeLists.txt) BLAS calls run on the same workers, so their
  // spinning no longer competes with a second pool during prompts.
  std::string_view command;
  for (int i = 1; i < argc; ++i)
    if (argv[i][0] != '-') {
      command = argv[i];
      break;
    }
  const bool inference = command == "serve" || command == "infer" || command == "chat" ||
                         command == "generate" || command == "eval";
  // Everything else (training, conversion) lets idle workers sleep: they share the cores with
  // anything else on the machine, and spinning ones steal the cores the work needs (the tiny
  // model trained 7x slower on a loaded 2-core machine; sched_yield was 17% of a 0.5B LoRA
  // profile).
  if (inference)
    changed |= set_default_env("GOMP_SPINCOUNT", "300000");
  else
    changed |= set_default_env("OMP_WAIT_POLICY", "passive");
  changed |= set_default_env("OPENBLAS_THREAD_TIMEOUT", "4");
  // OpenBLAS picks its kernels by CPU model and falls back to SSE3 ("Prescott") on models newer
  // than the library (Debian 12's 0.3.21 on Emerald Rapids: sgemm 3x slower). Choose by feature
  // flags instead when it fell back below what the CPU supports.
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const std::string core = openblas_get_corename();
    auto is = [&](std::initializer_list<const char*> names) {
      for (const char* n : names)
        if (strcasecmp(core.c_str(), n) == 0) return true;
      return false;
    };
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      if (!is({"SkylakeX", "Cooperlake", "SapphireRapids"}))
        changed |= set_default_env("OPENBLAS_CORETYPE", "SkylakeX");
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      if (!is({"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}))
        changed |= set_default_env("OPENBLAS_CORETYPE", "Haswell");
    }
  }
  return changed;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace nnpipe;
  // The thread runtimes read their settings from the environment when the libraries load, before
  // main: fix the environment, then re-exec once (a user's explicit settings are kept).
  if (tune_runtime_environment(argc, argv) && std::getenv("NNPIPE_REEXEC") == nullptr) {
    setenv("NNPIPE_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  }
  // Keep freed activation buffers (logits of a training step are ~100 MB) in the heap for the next
  // step instead of returning them to the OS and page-faulting them in again (glibc maps blocks
  // above 32 MB afresh on every allocation).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{
      "nnpipe: fine-tune, quantize, export and run Qwen-family chat models in one native binary"};
  // The version and what runs here: CPU features, the kernel sets chosen from them, the BLAS.
  app.set_version_flag("--version", [] { return "nnpipe 0.1.0\n" + cpu::kernel_report(); });
  app.require_subcommand(1);
  app.fallthrough(false);
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "Show DEBUG messages on the console");
  app.add_flag("-q,--quiet", quiet, "Show only warnings and errors on the console");

  auto& reg = cli::registry();
  std::sort(reg.begin(), reg.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, cli::RunFn>> runs;
  for (auto& spec : reg) {
    CLI::App* sub = app.add_subcommand(spec.name, spec.description);
    // dev-* are the oracle tests' instruments, not product commands: an empty group keeps them
    // out of --help while `nnpipe dev-forward ...` still parses.
    if (spec.name.starts_with("dev-")) sub->group("");
    runs.emplace_back(sub, spec.setup(*sub));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  log::init(verbose ? spdlog::level::debug : quiet ? spdlog::level::warn : spdlog::level::info);
  std::string running;
  try {
    for (auto& [sub, fn] : runs)
      if (sub->parsed()) {
        running = sub->get_name();
        return fn();
      }
  } catch (const Error& e) {
    log::error("{}", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    // A size taken from an input (a model header, a context size, a dataset) that this machine
    // cannot hold: the input's fault, not a bug, but nothing more precise is known here.
    log::error(
        "out of memory while running 'nnpipe {}': the model, its context size or the data need "
        "more memory than is available (see the log above for the step)",
        running);
    return 1;
  } catch (const std::exception& e) {
    log::error("unexpected error: {}", e.what());
    return 2;
  }
  return 0;
}
