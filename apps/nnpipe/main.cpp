// nnpipe CLI entry point: global flags, then the self-registered subcommands (cmd_*.cpp).
#include <unistd.h>
#include <algorithm>
#include <cstdio>

#include <cstdlib>
#include <iostream>

#include "command.h"
#include "core/error.h"
#include "core/log.h"

namespace nnpipe::cli {
std::vector<CommandSpec>& registry() {
  static std::vector<CommandSpec> r;
  return r;
}
}  // namespace nnpipe::cli

int main(int argc, char** argv) {
  using namespace nnpipe;
  // Idle OpenMP workers must sleep, not spin: next to OpenBLAS's own threads or any other busy
  // process on the machine, spinning workers steal the cores the work needs (the tiny model
  // trained 7x slower on a loaded 2-core machine). libgomp reads the variable when it is loaded,
  // before main, so set it and re-exec once; a user's explicit choice is kept.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then run with the default policy
  }
  CLI::App app{
      "nnpipe: fine-tune, quantize, export and run Qwen-family chat models in one native binary"};
  app.set_version_flag("--version", "nnpipe 0.1.0");
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
    runs.emplace_back(sub, spec.setup(*sub));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  log::init(verbose ? spdlog::level::debug : quiet ? spdlog::level::warn : spdlog::level::info);
  try {
    for (auto& [sub, fn] : runs)
      if (sub->parsed()) return fn();
  } catch (const Error& e) {
    log::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    log::error("unexpected error: {}", e.what());
    return 2;
  }
  return 0;
}
